"""Serve fusion programs as models: an OpenAI-compatible server (``fusion-dspy serve``) and named profiles.

    from fusion_dspy.serve import ServeSettings, build_profiles, create_app
    app = create_app(build_profiles(fd.load_config("configs/vllm.yaml"), tuned=["tuned.json"]), ServeSettings())

The HTTP app needs the ``serve`` extra (FastAPI, uvicorn); profiles and runs (used by the litellm provider) do not,
so ``create_app`` and ``ServeSettings`` are imported on first use.
"""

from fusion_dspy.serve.profiles import Limits, Profile, build_profiles
from fusion_dspy.serve.run import FusionRun
from fusion_dspy.serve.schema import ChatCompletionRequest, ServeError

__all__ = ["ChatCompletionRequest", "FusionRun", "Limits", "Profile", "ServeError", "ServeSettings", "build_profiles",
           "create_app"]


def __getattr__(name: str):
    if name in ("ServeSettings", "create_app"):
        from fusion_dspy.serve import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
