"""A scripted search problem whose best configuration is known in advance (shared by tests and worker processes).

Sample k of every question answers ANSWERS[k]; the gold answer is "42". A majority vote is right from N=4 on
(N=2 ties and keeps "41"); the fusor answers with the majority only under the 'consensus' instruction and
copies the first candidate otherwise. So the best and cheapest configuration is: select, N=4.
"""

import re
import threading
from collections import Counter, defaultdict

import dspy

from fusion_dspy.backends import Backends
from fusion_dspy.backends.config import FusionConfig
from fusion_dspy.testing import scripted_lm
from fusion_dspy.workflows.task import Task

ANSWERS = ["41", "42", "42", "43", "42", "40", "44", "45"]
DEVSET = [dspy.Example(question=f"question {i}", answer="42").with_inputs("question") for i in range(3)]
TASK = Task("toy", "question -> answer", metric=lambda example, pred, trace=None: pred.answer == example.answer)


def make_backends(delay: float = 0.0, teachers: bool = False) -> Backends:
    drawn: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def generator(call):
        with lock:
            k = drawn[call.inputs["question"]]
            drawn[call.inputs["question"]] += 1
        return {"answer": ANSWERS[k % len(ANSWERS)]}

    def fusor(call):
        answers = re.findall(r'<candidate id="\d+">\n(.*?)\n</candidate>', call.inputs["candidates"])
        pick = Counter(answers).most_common(1)[0][0] if "most candidates support" in call.system else answers[0]
        return {"comparison": "compared", "answer": pick}

    models = {"gen": {"model": "scripted/gen", "max_tokens": 20}, "fusor": {"model": "scripted/fusor"}}
    lms = {"gen": scripted_lm(generator, model="scripted/gen", delay=delay),
           "fusor": scripted_lm(fusor, model="scripted/fusor")}
    generators = "gen"
    if teachers:  # a second teacher that is always wrong
        models["bad"] = {"model": "scripted/bad", "max_tokens": 20}
        lms["bad"] = scripted_lm(lambda call: {"answer": "0"}, model="scripted/bad")
        generators = ["gen", "bad"]
    config = FusionConfig.model_validate({
        "models": models,
        "roles": {"generators": generators, "fusor": "fusor"},
        "fusion": {"select": "majority", "max_concurrency": 1},
    })  # fmt: skip
    return Backends(config, lms=lms)


def generator_calls(backends: Backends) -> int:
    names = [t.model for t in backends.config.roles.teachers()]
    return sum(len(backends.lm(name).engine.calls) for name in names)
