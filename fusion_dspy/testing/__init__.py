"""Offline test doubles: a scripted dspy.LM and a loopback OpenAI-compatible server, answering the same way.

Example:
    >>> lm = scripted_lm(lambda call: {"answer": "4"} if call.wants("answer") else "?")
    >>> dspy.Predict("question -> answer")(question="2+2?", lm=lm).answer
    '4'
"""

from fusion_dspy.testing.engine import ScriptedEngine, scripted_lm
from fusion_dspy.testing.server import StubOpenAIServer
from fusion_dspy.testing.wire import ScriptedCall, format_reply, parse_body

__all__ = ["ScriptedCall", "ScriptedEngine", "StubOpenAIServer", "format_reply", "parse_body", "scripted_lm"]
