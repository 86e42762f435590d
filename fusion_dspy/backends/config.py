"""The config file: named models, the roles that use them (generators, fusor, judge), and fusion settings.

YAML or TOML, validated with pydantic. Keys are never written in it: a model names the *environment variable*
that holds its key. Example (YAML)::

    models:
      qwen:   {model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct, api_base: "http://127.0.0.1:8000/v1"}
      gpt:    {model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY}
    roles:
      generators: qwen          # or a teacher pool: [{model: qwen, count: 2}, {model: gpt}]
      fusor: gpt
      judge: gpt
    fusion: {n: 5, temperature: 0.7, method: fuse}
"""

import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from fusion_dspy.backends.engine_choice import EMBEDDED, EngineChoice, choose_engine
from fusion_dspy.backends.retries import MAX_RETRY_WAIT_S
from fusion_dspy.core.options import FuseSettings, SampleSettings
from fusion_dspy.errors import ConfigError, MissingFileError, MissingKeyError, UnreachableError  # noqa: F401

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Seconds one request may take when a model sets no `timeout`, by its role (the largest of its roles); without
# one, litellm waits 600 s, times the retries, on a hung server. A generator writes one candidate (seconds on a
# GPU server, tens on a slow CPU one); the fusor reads all N and writes the longest answer; a judge, a verdict.
ROLE_TIMEOUTS = {"generator": 60.0, "fusor": 180.0, "judge": 60.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# An environment variable's name; anything else pasted into api_key_env is most likely the key itself.
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Header names that carry credentials: a key must come from api_key_env, never from the file.
_SECRET_HEADERS = {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}


def _variable_name(value: str | None) -> str | None:
    if value is not None and not _VARIABLE_NAME.fullmatch(value):
        # The value is not echoed: what was pasted here is probably a key.
        raise ValueError("must be the NAME of an environment variable (letters, digits, _), e.g. OPENAI_API_KEY; "
                         "the value given is not one (is it the key itself? keys never go in the file)")  # fmt: skip
    return value


class Deployment(_Strict):
    """One replica of a model (e.g. one vLLM server); a model with several is load-balanced by litellm's Router."""

    api_base: str = Field(description="the replica's OpenAI-compatible endpoint, e.g. http://10.0.0.5:8000/v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding its key")
    model: str | None = Field(None, description="litellm model string of this replica, if not the model's")

    _key_variable = field_validator("api_key_env")(lambda cls, value: _variable_name(value))


class ModelConfig(_Strict):
    """A model as litellm reaches it, with its sampling defaults."""

    model: str = Field(description="litellm model string (openai/..., hosted_vllm/...), or 'embedded'")
    api_base: str | None = Field(None, description="the server's OpenAI-compatible endpoint (default: the provider's)")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    temperature: float | None = Field(None, ge=0, le=2, description="this model's own calls (fusor, judge); "
                                      "candidates use fusion.temperature")  # fmt: skip
    max_tokens: int | None = Field(None, gt=0, description="longest reply (default: DSPy's)")
    timeout: float | None = Field(None, gt=0, description="seconds per request (default: by role, see "
                                  "ROLE_TIMEOUTS)")  # fmt: skip
    context_window: int | None = Field(None, gt=0, description="tokens the model reads at once (default: litellm's "
                                       "model info, when it knows the model)")  # fmt: skip
    num_retries: int = Field(2, ge=0, le=10, description="retries of a failed request, with backoff (DSPy's rules)")
    max_retry_wait_s: float = Field(
        MAX_RETRY_WAIT_S, ge=0, description="longest wait for a server's Retry-After before a retry; one asking "
        "for longer ends the request at once (60: the OpenAI SDK's and litellm's own limit). Models with "
        "deployments or fallbacks retry in litellm's Router, which honours at most 60 s too")  # fmt: skip
    adapter: Literal["chat", "json", "xml", "plain"] | None = Field(
        None, description="DSPy adapter for this model's calls; 'plain' for small models (see PlainAdapter)"
    )
    cache: bool = Field(True, description="DSPy's cache of identical requests (reruns cost nothing)")
    deployments: list[Deployment] = Field(default_factory=list, description="replicas, load-balanced by litellm's "
                                          "Router")  # fmt: skip
    fallbacks: list[str] = Field(default_factory=list, description="names of models to try when this one fails")
    extra: dict[str, Any] = Field(default_factory=dict, description="more dspy.LM / litellm arguments (top_p ...)")
    batch_samples: Literal["auto"] | bool = Field(
        "auto", description="draw a call's samples in one request with the OpenAI `n` parameter; auto: for "
        "openai/ and hosted_vllm/ models (see fusion_dspy.core.batching)")  # fmt: skip
    engine: Literal["auto", "litellm", "native"] = Field(
        "auto", description="auto: native for every model lm15 routes, litellm for deployments, fallbacks and the "
        "rest (docs/configuration/engines.md); litellm: routing, every provider; native: DSPy's own lm15 client, "
        "routed once (fusion_dspy.backends.native), no deployments/fallbacks, no DSPy cost estimate")  # fmt: skip
    lean_client: bool = Field(False, description="litellm: skip its per-call logging callbacks (`no-log`), and "
                              "so any litellm callbacks you set up; DSPy still counts tokens")  # fmt: skip

    @model_validator(mode="after")
    def _native_has_no_router(self) -> "ModelConfig":
        if self.engine == "native" and (self.deployments or self.fallbacks):
            raise ValueError("engine: native cannot serve deployments or fallbacks (litellm's Router does): use "
                             "engine: auto or litellm for this model, or drop deployments/fallbacks")  # fmt: skip
        return self

    _key_variable = field_validator("api_key_env")(lambda cls, value: _variable_name(value))

    @field_validator("extra")
    @classmethod
    def _no_secrets_in_extra(cls, extra: dict[str, Any]) -> dict[str, Any]:
        headers = [name for field in ("headers", "extra_headers") for name in (extra.get(field) or {})]
        if {"api_key", "key"} & set(extra) or _SECRET_HEADERS & {str(name).lower() for name in headers}:
            raise ValueError("keys never go in the config file (not as api_key, nor in an Authorization or API-key "
                             "header): put the key in an environment variable and name it in api_key_env")  # fmt: skip
        return extra


# The built-in `embedded` model's settings, chosen by measurement on SmolLM2-135M (docs/benchmarks.md):
# plain chat (it cannot keep DSPy's field markers), 200 tokens (64 cut a quarter of the answers), and 0.3 for
# its own calls, i.e. the fusor's (fusion got worse with heat: 94% -> 72% from 0.3 to 0.8); candidates are
# sampled at fusion.temperature. Define a model named `embedded` to change them.
# No `n` batching: its samples share the server's 4 slots either way, and llama.cpp's `n` is not measured here.
EMBEDDED_DEFAULTS = ModelConfig(model=EMBEDDED, temperature=0.3, max_tokens=200, adapter="plain", context_window=8192,
                                batch_samples=False)  # fmt: skip


class Teacher(_Strict):
    """One member of a teacher pool; ``count`` samples per call weight it against the others."""

    model: str = Field(description="a model name of `models` (or 'embedded')")
    count: int = Field(1, ge=1, description="samples drawn from it per call")


class Roles(_Strict):
    """Which model plays each role. The fusor and judge default to the first generator."""

    generators: str | list[Teacher | str] = Field(EMBEDDED, min_length=1, description="the model that writes the "
                                                  "candidates, or a teacher pool")  # fmt: skip
    fusor: str | None = Field(None, description="the model that fuses (default: the first generator)")
    judge: str | None = Field(None, description="the model that judges, for select: listwise/pointwise (default: "
                              "the first generator)")  # fmt: skip

    def teachers(self) -> list[Teacher]:
        pool = [self.generators] if isinstance(self.generators, str) else self.generators
        return [Teacher(model=entry) if isinstance(entry, str) else entry for entry in pool]


class AdaptiveSettings(_Strict):
    """Adaptive N: draw in waves and stop once the candidates agree (see ``fusion_dspy.core.adaptive``)."""

    wave: int = Field(4, ge=1, description="samples per wave; agreement is checked after each")
    rule: Literal["auto", "majority", "overlap"] = Field(
        "auto", description="majority (short answers), overlap (free text), or auto: majority when all are short")
    threshold: float = Field(0.95, gt=0, le=1, description="majority: posterior probability the leader stays")
    overlap_threshold: float = Field(0.6, gt=0, le=1, description="free text: mean pairwise word-overlap F1")
    max_tokens: int | None = Field(None, ge=1, description="token budget of one call's samples")


class FusionSettings(_Strict, SampleSettings, FuseSettings):
    """How candidates are drawn and combined.

    The sampling and fusion knobs are inherited from the stages' own option objects
    (``fusion_dspy.core.options.SampleSettings`` / ``FuseSettings``: quorum, straggler_grace_s, min_candidates,
    max_concurrency, shuffle, retries, group_size, layers, permutations, permutation_pick): defined once there,
    they reach the modules, ``Layers``, ``Route`` and the server unchanged.
    """

    n: int | None = Field(None, ge=1, description="candidates per input (default 5, or the pool's total count)")
    temperature: float | None = Field(0.7, ge=0, le=2, description="of the candidates")
    method: Literal["fuse", "select", "auto"] = Field("fuse", description="auto: a trained router picks per input "
                                                      "(fusion.router)")  # fmt: skip
    select: Literal["consensus", "majority", "listwise", "pointwise"] = Field(
        "consensus", description="how Best-of-N picks, and how a fallback selects: vote (consensus for free text, "
        "majority for short answers) or an LLM judge")  # fmt: skip
    fallback: Literal["raise", "select"] = Field("raise", description="when fusion (or the judge) fails: raise, or "
                                                 "select a candidate as `select` says")  # fmt: skip
    compare: bool | None = Field(None, description="fusor writes a comparison first (default: unless its adapter "
                                 "is 'plain')")  # fmt: skip
    deadline_s: float | None = Field(None, gt=0, description="seconds one call may take in all (default: none)")
    adaptive: AdaptiveSettings | None = Field(None, description="stop sampling early when candidates agree")
    router: str | None = Field(None, description="a trained Router's JSON, for method: auto")


class FusionConfig(_Strict):
    """A whole config file. Build LMs and programs from it with ``fusion_dspy.backends``."""

    models: dict[str, ModelConfig] = Field(default_factory=dict, description="the models, by the name roles use")
    roles: Roles = Field(default_factory=Roles, description="which model plays each role")
    fusion: FusionSettings = Field(default_factory=FusionSettings, description="how candidates are drawn and "
                                   "combined")  # fmt: skip
    _source: Path | None = PrivateAttr(None)
    _engines: dict[str, EngineChoice] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        """Each model's engine, chosen once (``fusion_dspy.backends.engine_choice``)."""
        for name in (*self.models, EMBEDDED):
            cfg = self.model(name)
            self._engines[name] = choose_engine(cfg.model, cfg.engine, routed=bool(cfg.deployments or cfg.fallbacks),
                                                extra=cfg.extra, lean_client=cfg.lean_client)  # fmt: skip

    @model_validator(mode="after")
    def _names_resolve(self) -> "FusionConfig":
        known = set(self.models) | {EMBEDDED}
        used = [("roles.generators", t.model) for t in self.roles.teachers()]
        used += [(f"roles.{role}", getattr(self.roles, role)) for role in ("fusor", "judge")]
        used += [(f"models.{name}.fallbacks", fb) for name, cfg in self.models.items() for fb in cfg.fallbacks]
        for where, name in used:
            if name is not None and name not in known:
                raise ValueError(f"{where} names the model {name!r}, which is not defined; define it under "
                                 f"models: or use one of {sorted(known)}")  # fmt: skip
        for name, cfg in self.models.items():
            if any(self.model(fallback).model == EMBEDDED for fallback in cfg.fallbacks):
                raise ValueError(f"models.{name}.fallbacks names the embedded model, which litellm's Router cannot "
                                 "reach (it has no fixed address until it starts); fall back to a served model, "
                                 "or make embedded a generator or the fusor instead")  # fmt: skip
        return self

    def model(self, name: str) -> ModelConfig:
        """A model's settings; a model of the embedded kind starts from the measured embedded defaults."""
        defined = self.models.get(name)
        if defined is None:
            return EMBEDDED_DEFAULTS
        if defined.model == EMBEDDED:
            return EMBEDDED_DEFAULTS.model_copy(update={k: getattr(defined, k) for k in defined.model_fields_set})
        return defined

    def engine(self, name: str) -> EngineChoice:
        """The engine a model's requests go through, and why (a name not defined is the embedded model)."""
        return self._engines.get(name) or self._engines[EMBEDDED]

    def roles_of(self, name: str) -> set[str]:
        """The roles a model plays: itself, or as a fallback of a model that plays them."""
        roles = {"generator"} if name in {t.model for t in self.roles.teachers()} else set()
        roles |= {role for role in ("fusor", "judge") if getattr(self, role) == name}
        for backed, cfg in self.models.items():
            if name in cfg.fallbacks and backed != name:
                roles |= self.roles_of(backed)
        return roles

    def timeout(self, name: str) -> float:
        """Seconds per request of a model: its own ``timeout``, or the default of its most patient role."""
        own = self.model(name).timeout
        return own if own is not None else max(ROLE_TIMEOUTS[role] for role in self.roles_of(name) or {"generator"})

    @property
    def fusor(self) -> str:
        return self.roles.fusor or self.roles.teachers()[0].model

    @property
    def judge(self) -> str:
        return self.roles.judge or self.roles.teachers()[0].model


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save the file as "
                          "UTF-8.") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {error}") from error
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with models:, roles: and fusion:")
    return data or {}


def _explain(issue: dict[str, Any]) -> str:
    if issue["type"] == "extra_forbidden":
        return "unknown field: check its spelling, or remove it (the docs' configuration reference lists every field)"
    return issue["msg"].removeprefix("Value error, ")


def read_config(path: str | Path | None = None) -> FusionConfig:
    """Read and validate a YAML (.yaml/.yml) or TOML (.toml) config; ``None`` gives the all-embedded default."""
    if path is None:
        return FusionConfig()
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such config file. Check the path, or run without --config to use the "
                          "embedded local model for every role.")  # fmt: skip
    try:
        config = FusionConfig.model_validate(_read(path))
    except ValidationError as error:
        problems = "\n".join(f"  - {'.'.join(str(part) for part in issue['loc']) or '(top level)'}: "
                             f"{_explain(issue)}" for issue in error.errors())  # fmt: skip
        raise ConfigError(f"{path}: invalid config:\n{problems}") from None
    config._source = path
    return config


def config_source(config: FusionConfig) -> str:
    """Where a config came from, for error messages."""
    return str(config._source or "the default config")
