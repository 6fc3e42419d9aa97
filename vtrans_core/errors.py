"""Errors raised by vtrans_core. Callers (CLI, service) turn them into messages or HTTP 4xx."""


class CompressionError(ValueError):
    """A problem with the caller's input, found before (or instead of) doing the work.

    `field` names the offending input ("budget.target", "options.layout", "data", "model") so a
    service can point at it; `str(err)` is a sentence a person can act on.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CompressionCancelled(Exception):
    """Raised by a progress callback to stop a running compression cooperatively."""
