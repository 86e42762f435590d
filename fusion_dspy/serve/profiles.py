"""Named profiles: the fusion programs a server (or the litellm provider) offers as models.

``fusion`` (Sample -> Fuse) and ``best-of-n`` (Sample -> Select) are built from the config over the chat task;
each ``--tuned`` file adds one more, rebuilt with ``load_tuned`` over the program it was tuned on. A request
never changes a profile: settings of its own get a program constructed with them.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import Signature

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import MissingFileError
from fusion_dspy.core.best_of_n import BestOfN
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.errors import FusionDSPyError
from fusion_dspy.serve.agent import Agent
from fusion_dspy.serve.chat import ChatReply, reply_fields
from fusion_dspy.serve.schema import FusionOptions, ServeError


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on what a request may ask for.

    Args:
        max_n: Most candidates one request may draw.
        max_tokens: Largest ``max_tokens`` a request may give the candidates.
    """

    max_n: int = 16
    max_tokens: int = 8192


@dataclass
class Profile:
    """One served model: a fuse and a select program over the same Sample, and how chat maps onto its task.

    Args:
        name: The model name clients ask for.
        programs: ``{"fuse": FusionOfN, "select": BestOfN}`` sharing one ``Sample``.
        method: The method used when a request does not choose one.
        backends: The config's backends (panel and fusor names resolve here).
        description: One line for ``GET /v1/models``.
    """

    name: str
    programs: dict[str, FusionOfN | BestOfN]
    method: str
    backends: Backends
    description: str = ""
    input_field: str = field(init=False)
    reply_fields: list[str] = field(init=False)
    _variants: dict[tuple, FusionOfN | BestOfN] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self):
        task = self.programs[self.method].task_signature
        inputs = list(task.input_fields)
        if len(inputs) != 1:
            raise FusionDSPyError(f"Profile {self.name!r}: its task {task.signature!r} has {len(inputs)} input fields; "
                                  "a chat model needs exactly one (the conversation goes into it).")  # fmt: skip
        self.input_field, self.reply_fields = inputs[0], reply_fields(task)

    def model_names(self) -> list[str]:
        """The configured model names a request may put on the panel or make the fusor."""
        config = self.backends.config
        return list(dict.fromkeys([*config.models, *(t.model for t in config.roles.teachers()), config.fusor]))

    def model_labels(self, extra: Sequence[str] = ()) -> dict[str, str]:
        """``{litellm model string: configured name}`` of the models in use, to report panels by their names."""
        names = dict.fromkeys([*self.backends.used_models(), *extra])
        return {self.backends.lm(name).model: name for name in names}

    def _check_models(self, names: Sequence[str], param: str) -> None:
        known = self.model_names()
        for i, name in enumerate(names):
            if name not in known:
                where = f"{param}[{i}]" if param.endswith("models") else param
                raise ServeError(400, f"{where}: {name!r} is not a configured model; choose from {known}.", param=where)

    def program_for(self, options: FusionOptions | None, n: int | None, temperature: float | None,
                    max_tokens: int | None, limits: Limits, agent: Agent | None = None
                    ) -> FusionOfN | BestOfN:  # fmt: skip
        """The program for one request's settings: the profile's own, or one built with them (and its prompts).

        A request never changes a profile. A variant is a complete program, constructed with the request's N,
        temperature, panel and fusor and loaded with the profile's tuned state; the last few are kept, so a
        client that sends the same settings again does not pay for building one. An ``agent`` (tools, a JSON
        answer, stop sequences) gets the chat task typed for it, every reply held to it (``Agent.adapter``).
        """
        options = options or FusionOptions()
        method = options.method or self.method
        if n is not None and n > limits.max_n:
            param = "fusion.n" if options.n is not None else "n"  # the field the request gave it in
            raise ServeError(400, f"{param}={n} is above this server's limit of {limits.max_n} candidates.",
                             param=param)  # fmt: skip
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ServeError(400, f"max_tokens={max_tokens} is above this server's limit of {limits.max_tokens}.",
                             param="max_tokens")  # fmt: skip
        if options.models:
            self._check_models(options.models, "fusion.models")
            if n is None and len(options.models) > limits.max_n:  # one candidate per panel member
                raise ServeError(400, f"fusion.models names {len(options.models)} panel members, one candidate each: "
                                 f"above this server's limit of {limits.max_n} candidates.", param="fusion.models")
        if options.fusor:
            self._check_models([options.fusor], "fusion.fusor")
        key = (method, n, temperature, max_tokens, tuple(options.models or ()), options.fusor, agent and agent.key)
        if key[1:] == (None, None, None, (), None, None):
            return self.programs[method]
        if key not in self._variants:
            if len(self._variants) >= 32:
                self._variants.pop(next(iter(self._variants)))
            self._variants[key] = self._variant(*key[:-1], agent)
        return self._variants[key]

    def _variant(self, method: str, n: int | None, temperature: float | None, max_tokens: int | None,
                 models: tuple[str, ...], fusor: str | None, agent: Agent | None = None
                 ) -> FusionOfN | BestOfN:  # fmt: skip
        """The profile's program with this request's settings: its own options (derived, never changed) with the
        request's N, temperature, panel, candidate max_tokens and fusor, and its tuned state."""
        base = self.programs[method]
        sampling = base.sample.options
        if models:
            panel = self.backends.generator_options(list(models))
            lm, lms = panel["lm"], list(panel["lms"] or [])
            panel_options = self.backends.sample_options(list(models))  # each panel model batches as configured
            sampling = sampling.replace(batch_samples=panel_options.batch_samples, adapter=panel_options.adapter)
        else:
            lm, lms = base.sample.generator_lm, base.sample.teacher_lms
        if max_tokens is not None:
            lm, lms = lm and lm.copy(max_tokens=max_tokens), [teacher.copy(max_tokens=max_tokens) for teacher in lms]
        count = n or (len(models) if models else base.sample.n)
        sampling = sampling.capped(count)
        arguments: dict[str, Any] = {"n": count, "temperature": base.sample.temperature if temperature is None else
                                     temperature, "lm": lm, "lms": lms or None, "sampling": sampling}  # fmt: skip
        if isinstance(base, FusionOfN):
            arguments.update(fusing=base.fusing, fallback=base.fallback, fusor_lm=base.fuse.fusor_lm)
        else:
            arguments.update(selection=base.selection, fallback=base.fallback)
        if fusor:
            arguments.update(self._combiner(base, fusor))
        if agent is not None:  # the chat task typed for the agent; the tuned prompts are the plain chat task's
            return self.backends.program(dspy.Predict(agent.signature()), method=method, **agent.arguments(arguments))
        program = self.backends.program(base.sample.module, method=method, **arguments)
        program.load_state(base.dump_state())  # the profile's tuned instructions and demos
        return program

    def _combiner(self, base: FusionOfN | BestOfN, name: str) -> dict[str, Any]:
        lm, adapter = self.backends.lm(name), self.backends.adapter(name)
        if isinstance(base, FusionOfN):
            return {"fusor_lm": lm, "fusing": base.fusing.replace(adapter=adapter)}
        if base.select.method in ("listwise", "pointwise"):
            return {"selection": base.selection.replace(judge_lm=lm, adapter=adapter)}
        raise ServeError(400, f"fusion.fusor: this profile selects by {base.select.method}, which uses no model; "
                         "drop fusion.fusor or use method 'fuse'.", param="fusion.fusor")  # fmt: skip


def _programs(backends: Backends, module: dspy.Module | type[Signature], **overrides: Any) -> dict[str, Any]:
    fused = backends.program(module, method="fuse", **overrides)
    best = backends.program(module, method="select", sample=fused.sample)
    return {"fuse": fused, "select": best}


def builtin_profiles(backends: Backends) -> list[Profile]:
    """``fusion`` (Sample -> Fuse) and ``best-of-n`` (Sample -> Select) over the chat task, sharing one Sample."""
    programs = _programs(backends, dspy.Predict(ChatReply))
    return [Profile("fusion", programs, "fuse", backends, "Fusion-of-N: N candidates, one fused answer"),
            Profile("best-of-n", programs, "select", backends, "Best-of-N: N candidates, the best one kept")]


def tuned_profile(spec: str, backends: Backends) -> Profile:
    """A profile from ``[NAME=]PATH`` of a ``tuned.json`` (``fusion-dspy optimize``); NAME defaults to the stem.

    The program it was tuned on comes from the file (``settings.program``, written by ``optimize``); files without
    one were tuned on the chat task. Its method, N, temperature, teachers and prompts are the tuned ones.
    """
    from fusion_dspy.optimizers.tuned import load_tuned
    from fusion_dspy.workflows.task import resolve_task

    name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--tuned {spec}: no such file. Give the tuned.json written by `fusion-dspy optimize`.")
    settings = json.loads(path.read_text()).get("settings", {})
    program_spec = settings.get("program")
    module = resolve_task(program_spec).generator() if program_spec else dspy.Predict(ChatReply)
    try:
        tuned = load_tuned(path, backends, module)
    except (KeyError, ValueError) as error:
        raise FusionDSPyError(f"--tuned {spec}: its saved state does not fit the program "
                              f"{program_spec or 'chat (conversation -> response)'} ({error}). Re-run optimize, "
                              "which records the program in the file.") from error  # fmt: skip
    method = settings.get("method", "fuse")
    other = "select" if method == "fuse" else "fuse"
    programs = {method: tuned, other: backends.program(module, method=other, sample=tuned.sample)}
    about = f"tuned ({path.name}): {method}, n={tuned.sample.n}, program {program_spec or 'chat'}"
    return Profile(name or path.stem, programs, method, backends, about)


def build_profiles(backends: Backends, tuned: Sequence[str] = ()) -> dict[str, Profile]:
    """Every profile of a server: the two built-in ones and one per tuned file, by name."""
    profiles = builtin_profiles(backends) + [tuned_profile(spec, backends) for spec in tuned]
    by_name: dict[str, Profile] = {}
    for profile in profiles:
        if profile.name in by_name:
            raise FusionDSPyError(f"Two profiles are named {profile.name!r}: name one --tuned NAME=PATH.")
        by_name[profile.name] = profile
    return by_name
