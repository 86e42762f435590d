"""Save a tuned fusion program to JSON and load it back: the searched settings plus the predictors' state."""

import json
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import Signature

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import AdaptiveSettings
from fusion_dspy.core.adaptive import Adaptive
from fusion_dspy.core.best_of_n import BestOfN
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.workflows.jsonl import write_atomically

FORMAT = "fusion-dspy/tuned-program/1"


def tuned_adaptive(backends: Backends, threshold: float) -> Adaptive:
    """Adaptive N with a tuned agreement ``threshold`` (the majority posterior for short answers, the mean overlap
    for free text), the rest from the config's ``fusion.adaptive`` settings."""
    base = (backends.config.fusion.adaptive or AdaptiveSettings()).model_dump()
    return Adaptive(**{**base, "threshold": threshold, "overlap_threshold": threshold})


def save_tuned(program: FusionOfN | BestOfN, settings: dict[str, Any], path: str | Path) -> Path:
    """Write ``settings`` (n, temperature, method, teachers...) and the program's predictor state to ``path``.

    Predictor state holds instructions and demos (the fusor's tuned instruction included) and no LM, so the
    file carries no endpoints or keys: backends come from the config when it is loaded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "settings": settings, "state": program.dump_state()}
    write_atomically(path, json.dumps(record, indent=2, ensure_ascii=False, default=str))  # a crash keeps the last
    return path


def load_tuned(
    path: str | Path, backends: Backends, module: dspy.Module | str | type[Signature]
) -> FusionOfN | BestOfN:
    """Rebuild the tuned program over ``module`` with ``backends``; it behaves as the program that was saved.

    Example:
        >>> program = backends.program(dspy.Predict("question -> answer"), n=3, instructions="Merge the drafts.")
        >>> path = save_tuned(program, {"n": 3, "temperature": 0.7, "method": "fuse"}, tmp_path / "tuned.json")
        >>> tuned = load_tuned(path, backends, dspy.Predict("question -> answer"))
        >>> tuned.sample.n, tuned.fuse.predict.signature.instructions
        (3, 'Merge the drafts.')
    """
    record = json.loads(Path(path).read_text())
    if record.get("format") != FORMAT:
        raise FusionDSPyError(f"{path}: not a tuned fusion-dspy program (format {record.get('format')!r}).")
    settings = record["settings"]
    overrides: dict[str, Any] = {"n": settings["n"], "temperature": settings["temperature"]}
    if settings.get("teachers"):
        overrides.update(backends.generator_options(settings["teachers"].split("+")))
    if settings.get("adaptive"):
        overrides["adaptive"] = tuned_adaptive(backends, settings["adaptive"])
    # Fusion structures (group fusion, layers, permutations) rebuild the same predictors before their state loads.
    overrides.update({key: settings[key] for key in ("group_size", "layers", "permutations") if key in settings})
    program = backends.program(module, method=settings["method"], **overrides)
    program.load_state(record["state"])
    return program
