"""The transport of a native engine's clients: lm15's own, kept from reading the environment on every request.

lm15's stdlib transports honour ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (minus ``NO_PROXY``) by reading
them on every request: urllib's ``getproxies()``, a walk over the whole environment. That is 0.09 ms a request
with 35 variables and 0.7 ms with 335, as in a Kubernetes pod, which gets variables for every service of its
namespace. The server sends two requests per fused answer at N = 3, and an unbatched ``FusionOfN(64)`` sends 65.

When the environment names no proxy lm15 would use (``ROUTED``), a client gets a transport that does not look
(``trust_env=False``): each request would have found no proxy anyway. When a proxy is set, lm15 keeps
honouring it per request, ``NO_PROXY`` included. As with httpx, the environment is read when a client is built: a
proxy variable set later applies to the clients built after it.

DSPy exports no name for lm15's transport classes. The class is the one a router builds for itself, and it is
constructed with the router config's own ``transport_kwargs()``, the keywords the router would use
(tests/test_dspy_contract.py pins both).
"""

import functools
from dataclasses import replace
from typing import Any
from urllib.request import getproxies

from dspy import lm15

# The proxies lm15 looks up for a request: its URL's scheme's, else ALL_PROXY's (any other ``*_PROXY`` variable,
# NO_PROXY, FTP_PROXY or a Kubernetes ``<SERVICE>_SERVICE_PORT_PROXY``, names none it would use).
ROUTED = frozenset({"http", "https", "all"})


@functools.cache
def transport_class(router_class: type) -> type:
    """The class of the transport a router of ``router_class`` (``LMRouter``, ``AsyncLMRouter``) builds.

    Example:
        >>> transport_class(lm15.LMRouter).__name__, transport_class(lm15.AsyncLMRouter).__name__
        ('StdlibTransport', 'StdlibAsyncTransport')
    """
    router = router_class(lm15.RouterConfig(env={}, api_keys={"openai": "probe"}))  # offline: nothing is sent
    return type(router.lm("openai:probe").transport)


def client_config(config: lm15.RouterConfig, router_class: type) -> lm15.RouterConfig:
    """The router settings of a new client: ``config``, with a transport that reads no proxy variables per request
    when the environment sets none.

    Args:
        config: The engine's router settings (``fusion_dspy.backends.native.router_config``).
        router_class: ``lm15.LMRouter`` or ``lm15.AsyncLMRouter``, the router the settings are for.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> config = lm15.RouterConfig(env={}, max_connections=8)
        >>> with mock.patch.dict(os.environ, {"HTTPS_PROXY": "http://proxy.internal:3128"}):
        ...     client_config(config, lm15.LMRouter) is config     # a proxy is set: lm15 reads it per request
        True
    """
    if ROUTED & getproxies().keys():  # a proxy lm15 would use is set: it honours it, per request
        return config
    transport: Any = transport_class(router_class)(**config.transport_kwargs(), trust_env=False)
    return replace(config, transport=transport, timeouts=None, max_connections=None)
