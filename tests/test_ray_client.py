"""``--address ray://...`` without Ray Client's extra: an error naming what to install, not a traceback."""

import sys

import pytest

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.ray_engine import RayEngine


def test_a_ray_client_address_without_its_extra_names_it(monkeypatch):
    ray = pytest.importorskip("ray")
    # As in a driver of its own: a Ray instance up in this process (tests/conftest.py ends the one the Ray cases
    # share after them) would be joined instead of the address tried.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setitem(sys.modules, "grpc", None)  # what `import grpc` meets without ray[client]
    with pytest.raises(FusionDSPyError, match=r"pip install 'ray\[client\]'"), RayEngine(address="ray://x:1")._session():
        pass
