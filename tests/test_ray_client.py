"""``--address ray://...`` without Ray Client's extra: an error naming what to install, not a traceback."""

import sys

import pytest

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.ray_engine import RayEngine


def test_a_ray_client_address_without_its_extra_names_it(monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance of another test is up in this process")
    monkeypatch.setitem(sys.modules, "grpc", None)  # what `import grpc` meets without ray[client]
    with pytest.raises(FusionDSPyError, match=r"pip install 'ray\[client\]'"), RayEngine(address="ray://x:1")._session():
        pass
