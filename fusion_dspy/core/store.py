"""CandidateStore: candidate pools on disk (diskcache), reused across optimizer trials, evaluations and runs.

A candidate is stored under its generator model, sampling settings, the generator's prompt state
(instructions and demos), the adapter, the example's inputs and its sample index within that model. So a trial
with N=2 reuses the first two samples a trial with N=8 drew, a rerun of a study samples nothing new, and a
tuned *fusor* never invalidates the candidates. Each candidate is written as soon as it is drawn: a crash loses
at most the samples in flight. diskcache is safe across threads and processes (two optuna workers share it).
"""

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import diskcache
import dspy

# Connection details are not sampling settings: the embedded server gets a new port every run, and a key
# rotation must not throw away the pool. Nor is a request's time limit (it follows the model's roles: making
# another model the fusor changes it). Models are told apart by their model names: replicas of one model on
# several servers are one model (``Sample.plan`` gives their samples distinct rollout ids).
_NOT_SETTINGS = frozenset({"api_base", "base_url", "api_key", "rollout_id", "headers", "extra_headers", "no-log",
                          "timeout"})  # fmt: skip


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class CandidateStore:
    """A persistent, process-safe store of sampled candidates.

    Args:
        directory: Folder of the diskcache (created if missing).
        size_limit: Most bytes kept on disk; the least recently used entries go first past it.

    Example:
        >>> store = CandidateStore(tmp_path / "candidates")
        >>> sample = fd.Sample("question -> answer", n=4, lm=lm, store=store)   # or FusionOfN(..., store=store)
        >>> _ = sample(question="2 + 2?"), sample(question="2 + 2?")   # the second call sends no request
        >>> store.hits, store.misses, len(lm.engine.calls)
        (4, 4, 4)
    """

    def __init__(self, directory: str | Path = ".fusion_dspy_cache/candidates", size_limit: int = 2**32):
        self.directory = Path(directory)
        # "least-recently-used" updates an entry's access time on every hit, so the pools a study keeps reading
        # stay while old ones go; diskcache's default ("least-recently-stored") would evict the oldest draws first.
        self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit, eviction_policy="least-recently-used")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def generator_state(generator: dspy.Module) -> str:
        """A digest of the generator's prompt state (instructions, demos), and of what else changes its replies:
        its predictors' own settings (``dspy.Predict(..., max_tokens=...)``) and field types other than ``str``.
        One per call, shared by its N keys."""
        extra = {}
        for name, predictor in generator.named_predictors():
            types = {field: str(info.annotation) for field, info in predictor.signature.fields.items()
                     if info.annotation is not str}  # fmt: skip
            if predictor.config or types:
                extra[name] = {"config": predictor.config, "types": types}
        state = generator.dump_state()
        return _digest({"state": state, "predictors": extra} if extra else state)  # str-only keys stay as they were

    @staticmethod
    def settings(lm: Any, temperature: float | None) -> dict[str, Any]:
        """The LM's sampling settings as a sample is keyed by them: its kwargs without connection details, and
        ``temperature`` (when given) as what is sent."""
        settings = {k: v for k, v in (getattr(lm, "kwargs", {}) or {}).items() if k not in _NOT_SETTINGS}
        if temperature is not None:
            settings["temperature"] = temperature
        return settings

    @staticmethod
    def key(lm: Any, temperature: float | None, generator_state: str, adapter: Any, inputs: dict, index: int) -> str:
        """The key of one sample: everything that changes what the generator would write, nothing else."""
        return _digest({
            "model": lm.model,
            "settings": CandidateStore.settings(lm, temperature),
            "generator": generator_state,
            "adapter": type(adapter or dspy.settings.adapter).__name__,
            "inputs": inputs,
            "index": index,
        })  # fmt: skip

    def get(self, key: str) -> tuple[dspy.Prediction, dict, bool] | None:
        """A stored candidate, the token usage it cost when it was drawn and whether its reply was cut short
        (see ``Candidate.truncated``), or ``None``."""
        record = self._cache.get(key)
        with self._lock:
            if record is None:
                self.misses += 1
                return None
            self.hits += 1
        return dspy.Prediction(**record["fields"]), record["usage"], bool(record.get("truncated"))

    def put(self, key: str, candidate: dspy.Prediction, usage: dict, truncated: bool = False) -> None:
        self._cache.set(key, {"fields": candidate.toDict(), "usage": usage, "truncated": truncated})

    def __len__(self) -> int:
        return len(self._cache)

    def __bool__(self) -> bool:
        # An empty store is still a store: without this, `store or default` would silently swap it out.
        return True

    def close(self) -> None:
        self._cache.close()
