"""Serve fusion programs as models: an OpenAI-compatible server (``fusion-dspy serve``) and named profiles.

    from fusion_dspy.serve import ServeSettings, build_profiles, create_app
    app = create_app(build_profiles(fd.load_config("configs/vllm.yaml"), tuned=["tuned.json"]), ServeSettings())
"""

from fusion_dspy.serve.app import ServeSettings, create_app
from fusion_dspy.serve.profiles import Limits, Profile, build_profiles
from fusion_dspy.serve.run import FusionRun
from fusion_dspy.serve.schema import ChatCompletionRequest, ServeError

__all__ = ["ChatCompletionRequest", "FusionRun", "Limits", "Profile", "ServeError", "ServeSettings", "build_profiles",
           "create_app"]
