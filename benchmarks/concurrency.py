"""FusionOfN(n=8) inside a larger program against a server that takes 0.5 s per request.

Run by hand: `python benchmarks/concurrency.py`. Prints wall time against the critical path (one sample +
one fusion = 2 requests) and against what sequential code would take (8 samples + 1 fusion = 9 requests).
"""

import asyncio
import time

import dspy

import fusion_dspy as fd
from fusion_dspy.testing import StubOpenAIServer

DELAY, N = 0.5, 8


def respond(call):
    return {"comparison": "same", "answer": "fused"} if call.wants("comparison") else {"answer": "sampled"}


class Program(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = fd.FusionOfN("question -> answer", n=N)

    def forward(self, question):
        return self.answer(question=question)

    async def aforward(self, question):
        return await self.answer.acall(question=question)


def main() -> None:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    critical, sequential = 2 * DELAY, (N + 1) * DELAY
    with StubOpenAIServer(respond=respond, delay=DELAY) as server:
        lm = dspy.LM("openai/bench", api_base=server.api_base, api_key="x", engine="litellm", num_retries=0)
        with dspy.context(lm=lm):
            # litellm's first sync and first async call import and set up clients (~3 s): not what we measure.
            Program()(question="warm-up")
            asyncio.run(Program().acall(question="warm-up"))
            for label, run in [
                ("sync forward", lambda: Program()(question="q")),
                ("async aforward", lambda: asyncio.run(Program().acall(question="q"))),
            ]:
                start = time.perf_counter()
                run()
                wall = time.perf_counter() - start
                print(f"{label:15s} wall {wall:5.2f} s | {wall / critical:4.2f}x critical path ({critical:.1f} s) "
                      f"| {wall / sequential:4.2f}x sequential ({sequential:.1f} s) | peak in flight "
                      f"{server.peak_in_flight}")  # fmt: skip


if __name__ == "__main__":
    main()
