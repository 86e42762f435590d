"""What N costs on the embedded model: N samples drawn concurrently (4 server slots) vs one after another.

Run by hand: `python benchmarks/embedded_throughput.py`. Prints wall time for each way and their ratio, plus
completion (generated) tokens per second: prompt tokens are prefilled, not decoded, and would inflate the
rate. Cache off, so every request really generates.
"""


import dspy

import fusion_dspy as fd
from fusion_dspy.core.meter import StageMeter

QUESTION = "Give two tips for sleeping better."


def main(n: int = 4) -> None:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    backends = fd.load_config(None)
    timings = {}
    for label, concurrency in (("warm-up", n), ("concurrent", n), ("sequential", 1)):
        # A new program per way (no stage patched after construction); the warm-up loads the model and litellm.
        sample = backends.program("question -> answer", method="select", n=n, max_concurrency=concurrency).sample
        meter = StageMeter()
        with meter.stage(label):
            sample(question=QUESTION if label != "warm-up" else "warm-up")
        completion = sum(int(c.get("completion_tokens") or 0) for c in meter.usage[label].values())
        timings[label] = (meter.seconds[label], completion)
    timings.pop("warm-up")
    for label, (seconds, tokens) in timings.items():
        print(f"{label:10s} N={n}: {seconds:5.2f} s, {tokens} completion tokens, {tokens / seconds:6.1f} tokens/s")
    (seq_s, seq_t), (con_s, con_t) = timings["sequential"], timings["concurrent"]
    print(f"sequential / concurrent wall time: {seq_s / con_s:.2f}x; concurrent / sequential tokens per second: "
          f"{(con_t / con_s) / (seq_t / seq_s):.2f}x (answers differ in length, so the second is the fairer one)")


if __name__ == "__main__":
    main()
