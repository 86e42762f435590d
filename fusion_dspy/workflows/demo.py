"""The main job: Fusion-of-N and Best-of-N side by side, on the same candidates, for a few built-in prompts."""

from dataclasses import dataclass

import dspy
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import FusionConfig
from fusion_dspy.backends.embedded import SMOLLM2_ALIAS
from fusion_dspy.core.fusion import BestOfN, FusionOfN
from fusion_dspy.core.meter import StageMeter, total_tokens

DEMO_PROMPTS = [
    "What is the capital of France?",
    "Give two tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
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


@dataclass
class DemoRow:
    """What one prompt produced, for the summary table."""

    prompt: str
    tokens: dict[str, int]
    seconds: dict[str, float]
    error: str | None = None


def _stage_table(meter: StageMeter, best: dspy.Prediction | None, fused: dspy.Prediction | None) -> Table:
    table = Table("stage", "tokens", "seconds", title="cost of this prompt", title_justify="left")
    rows = [("sample", meter.usage.get("sample"), meter.seconds.get("sample"))]
    for label, result, stage in (("select (BoN)", best, "select"), ("fuse (FusioN)", fused, "fuse")):
        if result is not None:
            rows.append((label, result.stage_usage[stage], result.stage_seconds[stage]))
    for label, usage, seconds in rows:
        table.add_row(label, str(total_tokens(usage)), f"{seconds or 0:.1f}")
    return table


def _one_prompt(prompt: str, fused_program: FusionOfN, best_program: BestOfN, console: Console) -> DemoRow:
    meter = StageMeter()
    n = fused_program.sample.n
    with console.status(f"Sampling {n} candidates concurrently..."), meter.stage("sample"):
        pool = fused_program.sample(question=prompt)
    candidates = Table("#", "candidate answer", show_header=True, title="candidates", title_justify="left")
    for i, candidate in enumerate(pool, 1):
        text = str(candidate.prediction.answer)
        candidates.add_row(str(i), text if len(text) <= CLIP else text[:CLIP].rstrip() + " …")
    parts: list = [candidates]
    for failure in pool.failures:
        parts.append(f"[yellow]dropped a failed sample:[/yellow] {failure.splitlines()[0][:160]}")

    best = fused = None
    with console.status("Best-of-N: selecting one candidate..."):
        try:
            best = best_program(question=prompt, candidates=pool)
            how = best_program.select.method
            parts.append(f"[bold]Best-of-N[/bold] ({how}: {METHOD_NOTES[how]}) keeps candidate "
                         f"{best.selected_index + 1}:\n{best.answer}\n")  # fmt: skip
        except Exception as error:  # noqa: BLE001 - shown, and the demo goes on
            parts.append(f"[red]Best-of-N failed:[/red] {type(error).__name__}: {str(error)[:200]}")
    with console.status("Fusion-of-N: the fusor writes a new answer from all candidates..."):
        try:
            fused = fused_program(question=prompt, candidates=pool)
            note = " [yellow](fusor output unusable: fell back to the vote)[/yellow]" if "fusion_error" in fused else ""
            parts.append(f"[bold green]Fusion-of-N[/bold green] writes a new answer from all of them:{note}\n"
                         f"{fused.answer}\n")  # fmt: skip
        except Exception as error:  # noqa: BLE001
            parts.append(f"[red]Fusion-of-N failed:[/red] {type(error).__name__}: {str(error)[:200]}")
    parts.append(_stage_table(meter, best, fused))
    console.print(Panel(Group(*parts), title=f"[bold]{prompt}[/bold]", title_align="left"))
    tokens = {"sample": total_tokens(meter.usage.get("sample"))}
    seconds = {"sample": meter.seconds["sample"]}
    for result, stage in ((best, "select"), (fused, "fuse")):
        if result is not None:
            tokens[stage], seconds[stage] = result.stage_tokens[stage], result.stage_seconds[stage]
    return DemoRow(prompt, tokens, seconds)


def run_demo(config: FusionConfig, n: int = 3, prompts: list[str] | None = None, console: Console | None = None):
    """Run the demo; returns one ``DemoRow`` per prompt. Backends are checked before anything is sampled."""
    console = console or Console()
    backends = Backends(config)
    with console.status("Checking backends (the embedded model loads in a few seconds)..."):
        backends.check()
    fused_program = backends.program(DEMO_SIGNATURE, method="fuse", n=n)
    best_program = backends.program(DEMO_SIGNATURE, method="select", sample=fused_program.sample)
    generators = ", ".join(dict.fromkeys(lm.model for lm in backends.generators))
    console.print(f"Generators: {generators} | fusor: {backends.fusor.model} | N = {n} | "
                  f"Best-of-N by {best_program.select.method}")  # fmt: skip
    rows = []
    for number, prompt in enumerate(prompts or DEMO_PROMPTS, 1):
        console.rule(f"prompt {number}/{len(prompts or DEMO_PROMPTS)}")
        try:
            rows.append(_one_prompt(prompt, fused_program, best_program, console))
        except Exception as error:  # noqa: BLE001 - e.g. every sample failed: report it, go on with the next
            console.print(f"[red]{prompt!r} failed:[/red] {type(error).__name__}: {str(error)[:300]}")
            rows.append(DemoRow(prompt, {}, {}, error=f"{type(error).__name__}: {error}"))
    _summary(rows, backends, console)
    return rows


def _summary(rows: list[DemoRow], backends: Backends, console: Console) -> None:
    table = Table("stage", "tokens", "seconds", title="all prompts", title_justify="left")
    for stage in ("sample", "select", "fuse"):
        tokens = sum(row.tokens.get(stage, 0) for row in rows)
        seconds = sum(row.seconds.get(stage, 0.0) for row in rows)
        table.add_row(stage, str(tokens), f"{seconds:.1f}")
    console.print(table)
    if any(lm.model.endswith(SMOLLM2_ALIAS) for lm in [*backends.generators, backends.fusor]):
        console.print(
            "[dim]These answers come from SmolLM2-135M, a tiny model that proves the pipeline runs offline; the "
            "paper wants a 27B+ fusor. Point the same demo at real models with --config (README: 'Use your own "
            "models').[/dim]"
        )
