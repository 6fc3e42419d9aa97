"""vtrans job service: the HTTP API (FastAPI), its database models and shared job logic."""
