"""The package's public names are the functions the contract names, whatever was imported first."""
import importlib


def test_compress_is_the_function_even_after_the_submodules_are_imported():
    importlib.import_module("vtrans_core.entry")
    importlib.import_module("vtrans_core.pipeline")
    from vtrans_core import compress, validate_request

    assert callable(compress) and compress.__name__ == "compress"
    assert callable(validate_request) and validate_request.__name__ == "validate_request"
