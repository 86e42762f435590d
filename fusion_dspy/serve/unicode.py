"""Text that cannot be encoded, made safe at the server's edges: lone UTF-16 surrogates in JSON.

A JSON string may hold an escape such as ``"\\ud800"`` that is no character on its own (a lone surrogate). Python's
``json`` reads it into a ``str`` that UTF-8 cannot encode; pydantic's parser refuses the whole body. A model can
return one too (its JSON reply is read by litellm into such a ``str``). The server replaces each lone surrogate by
U+FFFD (the replacement character, as a UTF-8 decoder does with a broken byte), on the way in and on the way out,
so a request is answered and an answer is sent, never cut.
"""

import json
import re
from typing import Any

from starlette.responses import JSONResponse

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (dict keys included) replaced by U+FFFD.

    Example:
        >>> scrub({"content": "a\\ud800b", "n": [1, "\\udfff"]})
        {'content': 'a�b', 'n': [1, '�']}
    """
    if isinstance(value, str):
        return LONE_SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    return value


def dumps(payload: Any) -> str:
    """Compact JSON text that UTF-8 can always encode (lone surrogates replaced only when there are some).

    Example:
        >>> dumps({"text": "ok \\ud800"}).encode()
        b'{"text":"ok \\xef\\xbf\\xbd"}'
    """
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(scrub(payload), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text


def loads_lenient(body: bytes) -> str | None:
    """The body as JSON text without lone surrogates, if Python's ``json`` reads it; ``None`` if it does not.

    Pydantic's parser refuses a lone-surrogate escape as invalid JSON; this is the fallback that accepts it.

    Example:
        >>> loads_lenient(b'{"content": "hi \\\\ud800"}')
        '{"content":"hi �"}'
        >>> loads_lenient(b"{not json") is None
        True
    """
    try:
        return dumps(scrub(json.loads(body)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested deeper than Python goes
        return None


class SafeJSONResponse(JSONResponse):
    """Starlette's ``JSONResponse`` whose body is always valid UTF-8 (see ``dumps``)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
