"""What N costs on the embedded model: N samples drawn concurrently (4 server slots) vs one after another.

Run by hand: `python benchmarks/embedded_throughput.py`. Prints wall time for each way and their ratio, plus
tokens per second. Cache off, so every request really generates.
"""


import dspy

import fusion_dspy as fd
from fusion_dspy.core.meter import StageMeter

QUESTION = "Give two tips for sleeping better."


def main(n: int = 4) -> None:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    backends = fd.load_config(None)
    sample = backends.program("question -> answer", method="select", n=n).sample
    sample(question="warm-up")  # model load, litellm import: not what we measure
    timings = {}
    for label, concurrency in (("concurrent", n), ("sequential", 1)):
        sample.max_concurrency = concurrency
        meter = StageMeter()
        with meter.stage(label):
            sample(question=QUESTION)
        timings[label] = (meter.seconds[label], meter.tokens()[label])
    for label, (seconds, tokens) in timings.items():
        print(f"{label:10s} N={n}: {seconds:5.2f} s, {tokens} tokens, {tokens / seconds:6.1f} tokens/s")
    (seq_s, seq_t), (con_s, con_t) = timings["sequential"], timings["concurrent"]
    print(f"sequential / concurrent wall time: {seq_s / con_s:.2f}x; concurrent / sequential tokens per second: "
          f"{(con_t / con_s) / (seq_t / seq_s):.2f}x (answers differ in length, so the second is the fairer one)")


if __name__ == "__main__":
    main()
