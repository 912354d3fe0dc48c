"""Reuses the server fixture of tests/python (the real touchlake binary on a temporary lake)."""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "touchlake_python_conftest", pathlib.Path(__file__).parent.parent / "python" / "conftest.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

Server = _mod.Server
server = _mod.server
