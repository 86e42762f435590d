"""The main job: Fusion-of-N and Best-of-N side by side, on the same candidates, for a few built-in prompts."""

import re
import time
from dataclasses import dataclass, field

import dspy
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import FusionConfig
from fusion_dspy.backends.embedded import SMOLLM2_ALIAS
from fusion_dspy.core.best_of_n import BestOfN
from fusion_dspy.core.fusion import FusionOfN
from fusion_dspy.core.meter import StageMeter, total_tokens
from fusion_dspy.workflows.demo_notes import cached_samples, copied_candidate, fusor_cached, panel_title


@dataclass(frozen=True)
class DemoPrompt:
    """A demo prompt; a checkable one has a known answer, and a pattern that a right answer contains.

    Example:
        >>> DemoPrompt("What is 5 + 3?", "8", r"\\b(?:8|eight)\\b").right("5 + 3 = 8.")
        True
    """

    text: str
    known_answer: str | None = None
    pattern: str | None = None

    @property
    def checkable(self) -> bool:
        return self.pattern is not None

    def right(self, answer: str) -> bool | None:
        """Whether ``answer`` contains the known answer; ``None`` when the prompt has none."""
        return None if self.pattern is None else re.search(self.pattern, answer, re.IGNORECASE) is not None


# Questions with a short list for an answer, where one sample of the embedded model often names part of the list
# and the fusor can put the parts together (a fused answer is checked for every item), then one open-ended prompt
# whose candidates give different tips; benchmarks/demo_quality.py measures them against the earlier prompts.
DEMO_PROMPTS = [
    DemoPrompt("Name the four seasons of the year.", "spring, summer, autumn, winter",
               r"(?=[\s\S]*\bspring\b)(?=[\s\S]*\bsummer\b)(?=[\s\S]*\b(?:autumn|fall)\b)(?=[\s\S]*\bwinter\b)"),
    DemoPrompt("Name the three primary colors.", "red, yellow, blue",
               r"(?=[\s\S]*\bred\b)(?=[\s\S]*\byellow\b)(?=[\s\S]*\bblue\b)"),
    DemoPrompt("Which two days make up the weekend?", "Saturday, Sunday",
               r"(?=[\s\S]*\bsaturday\b)(?=[\s\S]*\bsunday\b)"),
    DemoPrompt("Give two tips for sleeping better."),
]
DEMO_SIGNATURE = "question -> answer"
CLIP = 360  # characters of each candidate shown; the picked and fused answers are shown whole
METHOD_NOTES = {
    "consensus": "the candidate closest to all the others",
    "majority": "the most frequent answer",
    "listwise": "an LLM judge's pick",
    "pointwise": "the best LLM judge score",
    "reward": "the highest reward",
}


NEXT_STEPS = (
    "Next: fusion-dspy demo --config configs/vllm.yaml (your own models) · fusion-dspy serve (Fusion-of-N as an "
    "OpenAI-compatible model) · fusion-dspy eval --program factual_qa (does it pay on your task?)"
)


@dataclass
class DemoRow:
    """What one prompt produced, for the summary; ``right`` holds known-answer checks per method.

    ``copied`` is the position of the candidate the fused answer repeats word for word (``demo_notes``), and
    ``best_index`` Best-of-N's pick; ``cached`` names the stages DSPy's cache answered (no tokens spent).
    """

    prompt: str
    tokens: dict[str, int]
    seconds: dict[str, float]
    error: str | None = None
    right: dict[str, list[bool]] = field(default_factory=dict)
    copied: int | None = None
    best_index: int | None = None
    cached: list[str] = field(default_factory=list)


def _stage_table(meter: StageMeter, best: dspy.Prediction | None, fused: dspy.Prediction | None,
                 cached: list[str]) -> Table:  # fmt: skip
    table = Table("stage", "tokens", "seconds", title="cost of this prompt", title_justify="left")
    rows = [("sample", "sample", meter.usage.get("sample"), meter.seconds.get("sample"))]
    for label, result, stage in (("select (BoN)", best, "select"), ("fuse (FusioN)", fused, "fuse")):
        if result is not None:
            rows.append((label, stage, result.report.stages[stage].usage, result.report.stages[stage].seconds))
    for label, stage, usage, seconds in rows:
        tokens = f"{total_tokens(usage)} (cached)" if stage in cached else str(total_tokens(usage))
        table.add_row(label, tokens, f"{seconds or 0:.1f}")
    return table


def _kind(prompt: DemoPrompt, builtin: bool) -> str:
    if prompt.checkable:
        return f"short question with a known answer: {prompt.known_answer}"
    return "open-ended: no single right answer, judge for yourself" if builtin else "your prompt"


def _mark(prompt: DemoPrompt, answer: str, right: dict[str, list[bool]], method: str) -> str:
    verdict = prompt.right(answer)
    if verdict is None:
        return ""
    right.setdefault(method, []).append(verdict)
    # Says what is checked, no more: an answer can contain the known answer and still be wrong around it.
    return f" [green]✓ says {prompt.known_answer}[/green]" if verdict else f" [red]✗ no {prompt.known_answer}[/red]"


def _fusion_line(fused: dspy.Prediction, copied: int | None, best: dspy.Prediction | None) -> str:
    """What Fusion-of-N did, from its report and the copy check: wrote a new answer, or kept candidate k."""
    note = " [yellow](fusor output unusable: fell back to the vote)[/yellow]" if fused.report.fallback else ""
    if copied is None:
        return f"[bold green]Fusion-of-N[/bold green] writes a new answer from all of them:{note}"
    same = " (Best-of-N's pick too)" if best is not None and best.selected_index == copied else ""
    how = "" if note else ": the fusor repeated it word for word"
    return f"[bold green]Fusion-of-N[/bold green] kept candidate {copied + 1} as it was{same}{how}{note}"


CACHE_NOTE = ("[cyan]cached: 0 tokens spent[/cyan] [dim]— {what} read from DSPy's cache (the same requests as an "
              "earlier run), not written now; the seconds are cache reads[/dim]")


def _cached_stages(pool, fused: dspy.Prediction | None) -> list[str]:
    stages = ["sample"] if len(pool) and len(cached_samples(pool)) == len(pool) else []
    return stages + (["fuse"] if fused is not None and fusor_cached(fused) else [])


def _one_prompt(prompt: DemoPrompt, fused_program: FusionOfN, best_program: BestOfN, console: Console,
                builtin: bool) -> DemoRow:  # fmt: skip
    meter, right = StageMeter(), {}
    n = fused_program.sample.n
    with console.status(f"Sampling {n} candidates concurrently..."), meter.stage("sample"):
        pool = fused_program.sample(question=prompt.text)
    candidates = Table("#", "candidate answer", show_header=True, title="candidates", title_justify="left")
    for i, candidate in enumerate(pool, 1):
        text = str(candidate.prediction.answer)
        shown = text if len(text) <= CLIP else text[:CLIP].rstrip() + " …"
        candidates.add_row(str(i), shown + _mark(prompt, text, right, "one candidate"))
    title, lead = panel_title([Text(prompt.text, style="bold"), Text(f"({_kind(prompt, builtin)})", style="dim")],
                              console.width)  # fmt: skip
    parts: list = [*lead, candidates]
    for failure in pool.failures:
        parts.append(f"[yellow]dropped a failed sample:[/yellow] {str(failure).splitlines()[0][:160]}")

    best = fused = copied = None
    with console.status("Best-of-N: selecting one candidate..."):
        try:
            best = best_program(question=prompt.text, candidates=pool)
            how = best_program.select.method
            parts.append(f"[bold]Best-of-N[/bold] ({how}: {METHOD_NOTES[how]}) keeps candidate "
                         f"{best.selected_index + 1}:{_mark(prompt, str(best.answer), right, 'Best-of-N')}\n"
                         f"{best.answer}\n")  # fmt: skip
        except Exception as error:  # noqa: BLE001 - shown, and the demo goes on
            parts.append(f"[red]Best-of-N failed:[/red] {type(error).__name__}: {str(error)[:200]}")
    with console.status("Fusion-of-N: the fusor writes a new answer from all candidates..."):
        try:
            fused = fused_program(question=prompt.text, candidates=pool)
            copied = copied_candidate(fused)
            parts.append(f"{_fusion_line(fused, copied, best)}{_mark(prompt, str(fused.answer), right, 'Fusion-of-N')}"
                         f"\n{fused.answer}\n")  # fmt: skip
        except Exception as error:  # noqa: BLE001
            parts.append(f"[red]Fusion-of-N failed:[/red] {type(error).__name__}: {str(error)[:200]}")
    cached = _cached_stages(pool, fused)
    if cached:
        what = {"sample": "the candidates", "fuse": "the fused answer"}
        parts.append(CACHE_NOTE.format(what=" and ".join(what[stage] for stage in cached) + " were"))
    parts.append(_stage_table(meter, best, fused, cached))
    console.print(Panel(Group(*parts), title=title, title_align="left"))
    tokens = {"sample": total_tokens(meter.usage.get("sample"))}
    seconds = {"sample": meter.seconds["sample"]}
    for result, stage in ((best, "select"), (fused, "fuse")):
        if result is not None:
            tokens[stage], seconds[stage] = result.report.tokens[stage], result.report.stages[stage].seconds
    return DemoRow(prompt.text, tokens, seconds, right=right, copied=copied, cached=cached,
                   best_index=None if best is None else best.selected_index)  # fmt: skip


def run_demo(config: FusionConfig, n: int = 3, prompts: list[str] | None = None, console: Console | None = None):
    """Run the demo; returns one ``DemoRow`` per prompt. Backends are checked before anything is sampled.

    ``prompts`` replaces the built-in ``DEMO_PROMPTS`` (strings, or ``DemoPrompt`` to check a known answer).
    """
    console = console or Console()
    backends = Backends(config)
    started = time.perf_counter()
    with console.status("Checking backends (and starting the embedded model if a role uses it)..."):
        backends.check()
    ready = time.perf_counter() - started
    fused_program = backends.program(DEMO_SIGNATURE, method="fuse", n=n)
    best_program = backends.program(DEMO_SIGNATURE, method="select", sample=fused_program.sample)
    generators = ", ".join(dict.fromkeys(lm.model for lm in backends.generators))
    console.print(f"Generators: {generators} | fusor: {backends.fusor.model} | N = {n} | "
                  f"Best-of-N by {best_program.select.method} | backends ready in {ready:.1f} s")  # fmt: skip
    chosen = [p if isinstance(p, DemoPrompt) else DemoPrompt(p) for p in prompts] if prompts else DEMO_PROMPTS
    rows = []
    for number, prompt in enumerate(chosen, 1):
        console.rule(f"prompt {number}/{len(chosen)}")
        try:
            rows.append(_one_prompt(prompt, fused_program, best_program, console, builtin=not prompts))
        except Exception as error:  # noqa: BLE001 - e.g. every sample failed: report it, go on with the next
            console.print(f"[red]{prompt.text!r} failed:[/red] {type(error).__name__}: {str(error)[:300]}")
            rows.append(DemoRow(prompt.text, {}, {}, error=f"{type(error).__name__}: {error}"))
    _summary(rows, backends, console)
    return rows


def _summary(rows: list[DemoRow], backends: Backends, console: Console) -> None:
    table = Table("stage", "tokens", "seconds", title="all prompts", title_justify="left")
    for stage in ("sample", "select", "fuse"):
        tokens = sum(row.tokens.get(stage, 0) for row in rows)
        seconds = sum(row.seconds.get(stage, 0.0) for row in rows)
        table.add_row(stage, str(tokens), f"{seconds:.1f}")
    console.print(table)
    checks: dict[str, list[bool]] = {}
    for row in rows:
        for method, verdicts in row.right.items():
            checks.setdefault(method, []).extend(verdicts)
    if checks:
        console.print("Answers that contain the known answer, on the short questions: " + ", ".join(
            f"{method} {sum(v)}/{len(v)}" for method, v in checks.items()))  # fmt: skip
    fused = [row for row in rows if "fuse" in row.tokens]
    if fused:
        copies = [row for row in fused if row.copied is not None]
        same = sum(row.copied == row.best_index for row in copies)
        console.print(f"Fusion-of-N wrote a new answer for {len(fused) - len(copies)} of {len(fused)} prompts and kept "
                      f"a candidate word for word for {len(copies)} ({same} of them Best-of-N's pick).")  # fmt: skip
    if cached := _cache_summary(rows):
        console.print(cached)
    if any(lm.model.endswith(SMOLLM2_ALIAS) for lm in [*backends.generators, backends.fusor]):
        console.print(
            "[dim]These answers come from SmolLM2-135M, a tiny model that proves the pipeline runs offline; the "
            "paper wants a 27B+ fusor (README: 'Use your own models').[/dim]"
        )
    console.print(NEXT_STEPS)


def _cache_summary(rows: list[DemoRow]) -> str:
    """Says how many prompts DSPy's cache answered; empty when none (every stage cost tokens)."""
    done = [row for row in rows if row.error is None]
    hits = [row for row in done if row.cached]
    if not hits:
        return ""
    every = all(set(row.cached) >= {"sample", "fuse"} for row in done) and len(hits) == len(done)
    head = "Every answer above" if every else f"Some answers ({len(hits)} of {len(done)} prompts)"
    return (f"[cyan]{head} came from DSPy's cache: 0 tokens spent, and those seconds are cache reads, not model "
            "time.[/cyan] For fresh samples: DSPY_CACHEDIR=$(mktemp -d) fusion-dspy demo")
