"""Offline test doubles: a scripted dspy.LM and a loopback OpenAI-compatible server."""

from fusion_dspy.testing.engine import ScriptedCall, ScriptedEngine, format_reply, scripted_lm
from fusion_dspy.testing.server import StubOpenAIServer

__all__ = ["ScriptedCall", "ScriptedEngine", "StubOpenAIServer", "format_reply", "scripted_lm"]
