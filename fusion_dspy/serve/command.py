"""``fusion-dspy serve``: options -> profiles -> app -> uvicorn, in one process or in several worker processes.

With ``--workers K`` uvicorn starts K processes; each builds its own app (and its own backends, the embedded
model included) from the options, passed in ``$FUSION_DSPY_SERVE``. The concurrency limit is per worker. Their
metrics go to files in a temporary folder (``$PROMETHEUS_MULTIPROC_DIR``, prometheus-client's multiprocess mode)
that this command makes and removes, so ``/metrics`` of any worker shows them all.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.serve.server import IDLE_CONNECTION_S, check_exposure

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's (read when it is imported: not here, in the workers)
ENVIRONMENT = "FUSION_DSPY_SERVE"  # the options of a multi-worker server, for each worker (no key: its variable)


def _option(text: str, default: Any, **argument: Any) -> Any:
    """A field of ``ServeOptions`` that is also an argument of ``fusion-dspy serve`` (``--name-with-dashes``), with
    ``text`` as its help; ``argument`` adds to what ``add_arguments`` passes to argparse (a ``metavar``)."""
    return field(default=default, metadata={"help": text, **argument})


@dataclass(frozen=True)
class ServeOptions:
    """What a served app is built from; a key is named by its environment variable, never held here. Each option
    with a help text is an argument of ``fusion-dspy serve`` (``add_arguments``): a new option is one field here, and
    one in ``ServeSettings`` if the app reads it.

    Example:
        >>> app = ServeOptions(config=str(stub_config), max_n=8).app()   # tuned=("qa=tuned.json",) adds a model
        >>> type(app).__name__
        'FastAPI'
    """

    config: str | None = None
    tuned: tuple[str, ...] = field(default_factory=tuple)
    api_key_env: str | None = _option("environment variable holding the key clients must send as 'Authorization: "
                                      "Bearer <key>'", None, metavar="NAME")  # fmt: skip
    max_concurrency: int = _option("requests in flight; more get 429 (default 64)", 64)
    timeout: float = _option("seconds per request before 504 (default 600)", 600.0)
    max_n: int = _option("most candidates a request may ask for (default 16)", 16)
    max_body_bytes: int = _option("largest request body; more get 413", 1_000_000)
    otel: bool = _option("OpenTelemetry tracing of each request, its stages and candidates, exported as the OTEL_* "
                         "variables say (needs the otel extra)", False)  # fmt: skip
    keepalive_s: float = _option("seconds of silence after which a stream gets an SSE comment line; the stream starts "
                                 "at the first one at the latest (default 15; 0: none)", 15.0)  # fmt: skip
    drain_s: float = _option("seconds to keep serving after SIGTERM with /health/readiness at 503, before stopping "
                             "(default 5)", 5.0)  # fmt: skip
    metrics: bool = _option("serve Prometheus metrics at GET /metrics (default on)", True)
    idle_connection_s: float = _option("seconds a client's idle keep-alive connection stays open; keep it longer than "
                                       "the clients' own (httpx, the OpenAI SDK: 5 s; a load balancer's) (default 75)",
                                       IDLE_CONNECTION_S)  # fmt: skip

    @classmethod
    def of(cls, args: Any) -> "ServeOptions":
        """The options of ``fusion-dspy serve``'s parsed arguments, each option read from the argument of its name."""
        given = {option.name: getattr(args, option.name) for option in fields(cls)}
        return cls(**{**given, "config": str(args.config) if args.config else None, "tuned": tuple(args.tuned or ())})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add an argument to ``parser`` for each option with a help text: its type and default the field's, a
        switch with its ``--no-`` form for a yes/no option."""
        for option in fields(cls):
            if "help" not in option.metadata:
                continue
            flag, argument = "--" + option.name.replace("_", "-"), dict(option.metadata)
            if isinstance(option.default, bool):
                argument["action"] = argparse.BooleanOptionalAction
            elif option.default is not None:
                argument["type"] = type(option.default)
            parser.add_argument(flag, default=option.default, **argument)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise FusionDSPyError(f"--api-key-env {self.api_key_env}: that environment variable is not set. Export "
                                  f"it (export {self.api_key_env}=...) before starting the server.")  # fmt: skip
        return key

    def app(self) -> Any:
        """Backends checked, profiles built, the ASGI app. This process is the server's from now on (a
        ``CommandProcess`` never left): it keeps no DSPy history or trace (a server runs for days: see
        ``CommandProcess.keep_no_history``) and its logs mask the keys."""
        from fusion_dspy.backends import load_config
        from fusion_dspy.backends.secrets import Redactor, config_secrets
        from fusion_dspy.process import CommandProcess
        from fusion_dspy.serve.app import ServeSettings, create_app
        from fusion_dspy.serve.profiles import Limits, build_profiles

        server = CommandProcess(verbose=None).enter()  # uvicorn sets up its logs
        server.keep_no_history()
        key = self.api_key()
        if self.otel:
            from fusion_dspy.serve.tracing import configure

            configure()
        backends = load_config(self.config)
        redact = Redactor([key, *config_secrets(backends.config)])
        server.mask_logs(redact)  # before check(): what it logs or raises is masked too
        backends.check()
        profiles = build_profiles(backends, self.tuned)
        # the settings named alike here and there (max_concurrency, timeout, keepalive_s ...), each passed on
        shared = {option.name for option in fields(self)} & {setting.name for setting in fields(ServeSettings)}
        settings = ServeSettings(api_key=key, limits=Limits(max_n=self.max_n),
                                 **{name: getattr(self, name) for name in shared})  # fmt: skip
        app = create_app(profiles, settings, redact)
        app.state.profile_names = list(profiles)
        server.freeze_start_up()
        server.collect_young_less_often()
        return app


def app_from_environment() -> Any:
    """uvicorn's app factory in each worker process of ``--workers``."""
    options = json.loads(os.environ[ENVIRONMENT])
    return ServeOptions(**{**options, "tuned": tuple(options["tuned"])}).app()


def serve_command(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
                  log_level: str = "warning") -> None:  # fmt: skip
    """Serve until interrupted. Exposure and key are checked before anything is loaded or started."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise FusionDSPyError(f"fusion-dspy serve needs the serve extra ({error.name} is missing): "
                              "pip install 'fusion-dspy[serve]'.") from None  # fmt: skip

    from fusion_dspy.backends.config import read_config
    from fusion_dspy.serve.request_id import access_log_config

    key = options.api_key()
    check_exposure(host, key)
    auth = "key required" if key else "no key (loopback only)"
    server = {"host": host, "port": port, "log_level": log_level, "log_config": access_log_config(),
              "timeout_keep_alive": options.idle_connection_s}  # one server or K workers alike
    if workers < 2:
        app = options.app()
        print(f"fusion-dspy: serving {', '.join(app.state.profile_names)} on http://{host}:{port}/v1 ({auth})",
              file=sys.stderr)  # fmt: skip
        uvicorn.run(app, **server)
        return
    read_config(options.config)  # a broken config fails here, once, not in every worker
    os.environ[ENVIRONMENT] = json.dumps(asdict(options))
    print(f"fusion-dspy: {workers} workers on http://{host}:{port}/v1 ({auth})", file=sys.stderr)
    with shared_metrics_folder(options.metrics):
        uvicorn.run("fusion_dspy.serve.command:app_from_environment", factory=True, workers=workers, **server)


@contextlib.contextmanager
def shared_metrics_folder(enabled: bool = True) -> Iterator[str | None]:
    """A temporary folder for the workers' metrics, named in ``$PROMETHEUS_MULTIPROC_DIR`` (which the worker
    processes inherit) while the server runs; removed, and the variable put back, when it stops."""
    if not enabled:
        yield None
        return
    folder, before = tempfile.mkdtemp(prefix="fusion-dspy-metrics-"), os.environ.get(MULTIPROCESS)
    os.environ[MULTIPROCESS] = folder
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop(MULTIPROCESS, None)
        else:
            os.environ[MULTIPROCESS] = before
        shutil.rmtree(folder, ignore_errors=True)
