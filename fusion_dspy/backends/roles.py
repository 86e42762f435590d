"""From a config to ready ``dspy.LM`` objects per role, and to a FusionOfN/BestOfN.

Each model's engine is chosen when the config is loaded (``FusionConfig.engine(name)``,
``fusion_dspy.backends.engine_choice``): by default DSPy's own lm15 client, routed once
(``fusion_dspy.backends.native``), for every model lm15 routes (a local vLLM server, an API model, the embedded
model); litellm for the rest. A model with several ``deployments`` or with ``fallbacks`` is served by a
``litellm.Router`` (load balancing, retries, fallbacks) wrapped as a DSPy engine.
"""

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import dspy
from dspy import lm15

from fusion_dspy._litellm import import_litellm
from fusion_dspy.backends.config import (
    EMBEDDED,
    ConfigError,
    FusionConfig,
    MissingKeyError,
    ModelConfig,
    UnreachableError,
    config_source,
    read_config,
)
from fusion_dspy.backends.engine import AsyncRouterEngine, RouterEngine
from fusion_dspy.backends.native import NO_KEY, AsyncNativeEngine, NativeEngine
from fusion_dspy.backends.plain_adapter import PlainAdapter
from fusion_dspy.backends.programs import Programs
from fusion_dspy.backends.retries import CappedRetryLM
from fusion_dspy.backends.secrets import config_secrets, hold
from fusion_dspy.core.context import known_context_window

logger = logging.getLogger(__name__)
# NO_KEY: a self-hosted server without auth still needs *some* key (the OpenAI client refuses to send a request
# without one; vLLM's docs use "EMPTY"). Without api_base, litellm finds the provider's usual variable by itself.
ADAPTERS = {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter, "xml": dspy.XMLAdapter, "plain": PlainAdapter}


@dataclass
class Backends(Programs):
    """The LMs of one config, built once per model name and shared by the roles that use it.

    Args:
        config: A validated ``FusionConfig`` (``fusion_dspy.read_config(path)``).

    Example:
        >>> _ = (tmp_path / "models.yaml").write_text("{models: {local: {model: embedded}}, fusion: {n: 3}}")
        >>> backends = load_config(tmp_path / "models.yaml")   # = Backends(read_config(path))
        >>> backends.check()                  # keys present, servers reachable: before any sampling
        >>> program = backends.program(dspy.Predict("question -> answer"))
        >>> type(program).__name__, program.sample.n
        ('FusionOfN', 3)
    """

    config: FusionConfig
    lms: dict[str, dspy.BaseLM] | None = None

    def __post_init__(self):
        self._lms: dict[str, dspy.BaseLM] = dict(self.lms or {})
        hold(*config_secrets(self.config))  # masked in output files and a command's logs (fusion_dspy.process)

    def _where(self, name: str, field: str) -> str:
        return f"{config_source(self.config)}: models.{name}.{field}"

    def _key(self, name: str, variable: str | None, field: str = "api_key_env") -> str | None:
        if variable is None:
            return None
        value = os.environ.get(variable)
        if not value:
            raise MissingKeyError(f"{self._where(name, field)}: the environment variable {variable} is not set. Export "
                              f"it (export {variable}=...) or point {field} at the variable that holds the key.")
        return value

    def _litellm_params(self, name: str, cfg: ModelConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"model": cfg.model}
        if cfg.api_base:
            params["api_base"] = cfg.api_base
        if key := self._key(name, cfg.api_key_env):
            params["api_key"] = key
        elif cfg.api_base:
            params["api_key"] = NO_KEY
        params["timeout"] = self.config.timeout(name)
        return params

    def _router(self, name: str, cfg: ModelConfig) -> Any:
        litellm = import_litellm()
        model_list = []
        for i, replica in enumerate(cfg.deployments or [None]):
            params = self._litellm_params(name, cfg)
            if replica is not None:
                key = self._key(name, replica.api_key_env, f"deployments.{i}.api_key_env")
                params.update(api_base=replica.api_base, model=replica.model or cfg.model)
                params["api_key"] = key or params.get("api_key") or NO_KEY
            model_list.append({"model_name": name, "litellm_params": params})
        for fallback in cfg.fallbacks:
            fallback_cfg = self.config.model(fallback)
            model_list.append({"model_name": fallback, "litellm_params": self._litellm_params(fallback, fallback_cfg)})
        return litellm.Router(
            model_list=model_list,
            fallbacks=[{name: cfg.fallbacks}] if cfg.fallbacks else [],
            num_retries=cfg.num_retries,
            timeout=self.config.timeout(name),
        )

    def lm(self, name: str) -> dspy.LM:
        """The ``dspy.LM`` of one named model (the built-in ``embedded`` one included)."""
        if name in self._lms:
            return self._lms[name]
        cfg, choice = self.config.model(name), self.config.engine(name)
        logger.debug("model %s: engine %s", name, choice)
        if choice.engine == "litellm":
            import_litellm()  # now, with the collector off, rather than inside the first request
        sampling = {key: value for key, value in (("temperature", cfg.temperature), ("max_tokens", cfg.max_tokens))
                    if value is not None}  # fmt: skip
        if cfg.model == EMBEDDED:
            from fusion_dspy.backends.embedded import get_embedded_server

            lm = get_embedded_server().lm(choice.engine, cache=cfg.cache, num_retries=cfg.num_retries,
                                          timeout=self.config.timeout(name), **sampling, **cfg.extra)  # fmt: skip
        elif cfg.deployments or cfg.fallbacks:
            router = self._router(name, cfg)
            # The LM's model string keeps the config's name, so cache entries of different backends never mix.
            lm = dspy.LM(f"router/{name}", engine=RouterEngine(router, name),
                         async_engine=AsyncRouterEngine(router, name), cache=cfg.cache, num_retries=0,
                         **sampling, **cfg.extra)  # fmt: skip
        else:  # retried by CappedRetryLM: a server's Retry-After is waited for up to max_retry_wait_s only
            retries = {"cache": cfg.cache, "num_retries": cfg.num_retries, "max_retry_wait_s": cfg.max_retry_wait_s}
            if choice.engine == "native":  # DSPy's own client, routed once: no litellm on the request path
                lm = self._native_lm(name, cfg, {**retries, **sampling})
            else:
                lean = {"no-log": True} if cfg.lean_client else {}  # litellm's documented opt-out of callbacks
                lm = CappedRetryLM(engine="litellm", **retries, **self._litellm_params(name, cfg), **sampling,
                                   **lean, **cfg.extra)  # fmt: skip
        self._lms[name] = lm
        return lm

    def _native_lm(self, name: str, cfg: ModelConfig, options: dict[str, Any]) -> dspy.LM:
        self._key(name, cfg.api_key_env)  # a variable that is not set is a config error, here
        route = (cfg.model, cfg.api_base, cfg.api_key_env, self.config.timeout(name))
        try:
            engines = NativeEngine(*route), AsyncNativeEngine(*route)
        except lm15.LM15Error as error:
            raise ConfigError(f"{self._where(name, 'model')}: {error} (engine: native routes with DSPy's lm15; "
                              "use a provider/model it knows, or engine: litellm)") from None  # fmt: skip
        try:
            return CappedRetryLM(cfg.model, engine=engines[0], async_engine=engines[1], **options, **cfg.extra)
        except ValueError as error:  # e.g. connection settings in extra, which an engine of its own cannot take
            raise ConfigError(f"{self._where(name, 'extra')}: {error}") from None

    def adapter(self, name: str) -> dspy.Adapter | None:
        choice = self.config.model(name).adapter
        return ADAPTERS[choice]() if choice else None

    @cached_property
    def generators(self) -> list[dspy.LM]:
        return [self.lm(t.model) for t in self.config.roles.teachers() for _ in range(t.count)]

    def generator_options(self, names: list[str] | None = None) -> dict[str, Any]:
        """``Sample``'s ``lm=``/``lms=`` for these model names (default: the config's teacher pool)."""
        pool = [self.lm(name) for name in names] if names else self.generators
        return {"lm": pool[0], "lms": None} if len(pool) == 1 else {"lm": None, "lms": pool}

    def context_window(self, name: str) -> int | None:
        """The model's context window: from the config, else from litellm's model info, else unknown (None)."""
        return self.config.model(name).context_window or known_context_window(self.config.model(name).model)

    @property
    def fusor(self) -> dspy.LM:
        return self.lm(self.config.fusor)

    @property
    def judge(self) -> dspy.LM:
        return self.lm(self.config.judge)

    def used_models(self) -> list[str]:
        names = [t.model for t in self.config.roles.teachers()] + [self.config.fusor]
        if self.config.fusion.method in ("select", "auto") and self.config.fusion.select in ("listwise", "pointwise"):
            names.append(self.config.judge)
        names += [fb for name in list(names) for fb in self.config.model(name).fallbacks]
        return list(dict.fromkeys(names))

    def check(self, timeout: float = 5.0) -> None:
        """Fail fast, before any sampling: every key variable set, every local server answering."""
        for name in self.used_models():
            if name in self._lms:
                continue  # given ready-made: nothing of ours to check
            self.lm(name)  # builds it: raises on missing key variables
            cfg = self.config.model(name)
            bases = [("api_base", cfg.api_base)] + [(f"deployments.{i}.api_base", d.api_base)
                                                    for i, d in enumerate(cfg.deployments)]  # fmt: skip
            for field, base in bases:
                if base and not cfg.fallbacks and not len(cfg.deployments) > 1:
                    _probe(base, timeout, self._where(name, field))

def load_config(path: str | Path | None = None) -> Backends:
    """Read and validate a config file (``None``: the embedded model for every role) into its ``Backends``.

    Nothing is contacted yet: LMs are built on first use, and ``check()`` tests keys and servers up front.

    Example:
        >>> backends = load_config(None)      # or load_config("configs/vllm.yaml")
        >>> fused = backends.program(dspy.Predict("question -> answer"), n=2)
        >>> fused.sample.n, fused.fuse.fusor_lm.model
        (2, 'openai/smollm2-135m-instruct...')
    """
    return Backends(read_config(path))


def _probe(api_base: str, timeout: float, where: str) -> None:
    url = api_base.rstrip("/") + "/models"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (401, 404 ...): the server is up; auth problems surface on the first call
    except (urllib.error.URLError, OSError) as error:
        raise UnreachableError(f"{where}: cannot reach {api_base} ({getattr(error, 'reason', error)}). Start the "
                               "server, or fix the address.") from None
