"""Fusion beyond one call: group fusion over a context window, Mixture-of-Agents layers, permutations."""

import json
import re

import dspy
import litellm
import pytest

import fusion_dspy as fd
from fusion_dspy.core.options import FuseOptions
from fusion_dspy.core.permute import permutation_orders
from fusion_dspy.errors import FusionError
from fusion_dspy.testing import StubOpenAIServer, scripted_lm

SHOWN = re.compile(r'<candidate id="\d+">\n(.*?)\n</candidate>', re.DOTALL)
LONG = " ".join(["word"] * 80)  # ~400 characters: ~93 tokens per candidate, tags included


def shown(call) -> list[str]:
    """The candidates a fusor (or layer) request shows, in the order shown."""
    return SHOWN.findall(call.inputs.get("candidates", ""))


def long_answers(call):
    """Generators write ~100-token answers tagged with their sample index; the fusor says how many it read."""
    if call.wants("comparison"):
        return {"comparison": "compared", "answer": f"fused {len(shown(call))} " + LONG}
    return {"answer": f"draft {call.index} " + LONG}


def prompt_tokens(call) -> int:
    return litellm.token_counter(model="scripted/fusor", text=call.system + call.user)


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_pool_larger_than_the_context_window_is_fused_in_groups(use_async):
    generator = scripted_lm(long_answers, model="scripted/generator")
    fusor = scripted_lm(long_answers, model="scripted/fusor", max_tokens=150)
    # The window holds three ~93-token candidates (not four) next to the ~360-token rest of the prompt and a
    # 150-token answer.
    fused = fd.FusionOfN("question -> answer", n=9, lm=generator, fusor_lm=fusor, context_window=850)
    p = await fused.acall(question="Say it long.") if use_async else fused(question="Say it long.")
    calls = fusor.engine.calls
    assert p.fusion_groups == [[[0, 1, 2], [3, 4, 5], [6, 7, 8]]]
    assert len(calls) == 3 + 1, "three group fusions, then one fusion of the three fused answers"
    assert sorted(len(shown(call)) for call in calls) == [3, 3, 3, 3]
    assert max(prompt_tokens(call) for call in calls) + 150 <= 850, "every request fits the stated window"
    assert p.answer.startswith("fused 3") and len(p.candidates) == 9
    one_call = fd.FusionOfN("question -> answer", n=9, lm=generator, fusor_lm=fusor)(question="Say it long.")
    assert prompt_tokens(fusor.engine.calls[-1]) + 150 > 850, "the same pool in one call would not have fit"
    assert "fusion_groups" not in one_call


def test_an_explicit_group_size_makes_a_tree_over_http():
    def respond(call):
        return {"comparison": "c", "answer": f"fused {len(shown(call))}"} if call.wants("comparison") else \
            {"answer": "draft"}

    with StubOpenAIServer(respond=respond) as server:
        lm = dspy.LM("openai/stub", api_base=server.api_base, api_key="x", engine="litellm", cache=False)
        p = fd.FusionOfN("question -> answer", n=7, lm=lm, group_size=2)(question="q")
    fusor_bodies = [b for b in server.requests if "comparison" in b["messages"][0]["content"]]
    # 7 -> groups [2, 2, 2, 1] -> 4 answers -> [2, 2] -> 2 answers -> the final fusion: 3 + 2 + 1 fusor requests.
    assert p.fusion_groups == [[[0, 1], [2, 3], [4, 5], [6]], [[0, 1], [2, 3]]]
    assert len(fusor_bodies) == 6 and len(server.requests) == 7 + 6
    assert p.answer == "fused 2"


def test_a_candidate_too_long_for_the_window_is_a_clear_error_not_a_truncation():
    generator = scripted_lm(long_answers, model="scripted/generator")
    fusor = scripted_lm(long_answers, model="scripted/fusor", max_tokens=150)
    # 650 tokens leave ~140 for candidates: one ~93-token candidate fits, two do not.
    fused = fd.FusionOfN("question -> answer", n=4, lm=generator, fusor_lm=fusor, context_window=650)
    with pytest.raises(FusionError, match="cannot hold two of these candidates.*longer context_window"):
        fused(question="Say it long.")
    assert fusor.engine.calls == [], "nothing is fused in part"
    one = fd.FusionOfN("question -> answer", n=1, lm=generator, fusor_lm=fusor, context_window=650)
    assert one(question="Say it long.").answer.startswith("fused 1"), "one candidate that fits is fused as usual"
    with pytest.raises(ValueError, match="context_window"):
        FuseOptions(group_size="auto")
    with pytest.raises(ValueError, match="at least 2"):
        FuseOptions(group_size=1)
    with pytest.raises(ValueError, match="FuseOptions: layers: Input should be greater than or equal to 1"):
        FuseOptions(layers=0)
    with pytest.raises(ValueError, match="at least 2 layers"):
        fd.core.layers.Layers(fd.Sample("question -> answer"), dspy.Signature("question -> answer"), 1)


@pytest.mark.parametrize("use_async", [False, True])
async def test_each_layer_sees_the_previous_layers_answers_and_the_fusor_the_last(use_async):
    def respond(call):
        if call.wants("comparison"):
            return {"comparison": "c", "answer": "fused: " + " / ".join(shown(call))}
        previous = shown(call)
        layer = int(previous[0].split()[1]) + 1 if previous else 1
        return {"answer": f"layer {layer} call {call.index}"}

    lm = scripted_lm(respond)
    fused = fd.FusionOfN("question -> answer", n=2, lm=lm, layers=3)
    p = await fused.acall(question="q") if use_async else fused(question="q")
    generator_calls = [c for c in lm.engine.calls if not c.wants("comparison")]
    assert len(generator_calls) == 2 * 3 and len(lm.engine.calls) == 2 * 3 + 1
    by_layer = [[c["answer"] for c in layer] for layer in p.layer_candidates]
    assert [{a.split()[1] for a in layer} for layer in by_layer] == [{"1"}, {"2"}, {"3"}]
    layer2 = [c for c in generator_calls if shown(c) and shown(c)[0].startswith("layer 1")]
    assert len(layer2) == 2 and all(shown(c) == by_layer[0] for c in layer2), "layer 2 reads all of layer 1"
    assert p.answer == "fused: " + " / ".join(by_layer[2]), "the fusor reads the last layer"
    names = [name for name, _ in fused.named_predictors()]
    assert names == ["sample.module", "fuse.predict", "layers.layer_2.module", "layers.layer_3.module"]


def test_layer_predictors_save_load_and_bootstrap(tmp_path):
    lm = scripted_lm(lambda call: {"comparison": "c", "answer": "fused"} if call.wants("comparison")
                     else {"answer": "4"})  # fmt: skip
    program = fd.FusionOfN(dspy.Predict("question -> answer"), n=2, lm=lm, layers=2)
    layer = program.layers.layer_2.module
    layer.signature = layer.signature.with_instructions("Improve on them.")
    program.save(tmp_path / "p.json")
    loaded = fd.FusionOfN(dspy.Predict("question -> answer"), n=2, lm=lm, layers=2)
    loaded.load(tmp_path / "p.json")
    assert loaded.layers.layer_2.module.signature.instructions == "Improve on them."
    state = json.loads((tmp_path / "p.json").read_text())
    assert "layers.layer_2.module" in state and "api_base" not in json.dumps(state)
    trainset = [dspy.Example(question=f"{i}?", answer="fused").with_inputs("question") for i in range(2)]
    compiled = dspy.BootstrapFewShot(metric=lambda ex, pred, trace=None: pred.answer == ex.answer,
                                     max_bootstrapped_demos=1, max_labeled_demos=0).compile(loaded, trainset=trainset)
    assert compiled.layers.layer_2.module.demos and compiled.fuse.predict.demos, "bootstrap sees the layer's predictor"


def first_shown(call):
    """A badly position-biased fusor: it answers with whatever it is shown first."""
    return {"comparison": "the first one is best", "answer": shown(call)[0]}


@pytest.mark.parametrize("use_async", [False, True])
async def test_permutations_send_k_orders_and_keep_the_consensus_fusion(use_async):
    fusor = scripted_lm(first_shown, model="scripted/fusor")
    pool = [{"answer": "Lyon"}, {"answer": "Paris"}, {"answer": "Paris"}, {"answer": "Paris"}]
    inputs = {"candidates": pool, "question": "Capital of France?"}
    biased = fd.FusionOfN("question -> answer", fusor_lm=fusor)(**inputs)
    assert biased.answer == "Lyon" and biased.candidate_order == [0, 1, 2, 3], "one order: the first shown wins"
    fused = fd.FusionOfN("question -> answer", fusor_lm=fusor, permutations=3)
    p = await fused.acall(**inputs) if use_async else fused(**inputs)
    calls = fusor.engine.calls[1:]
    assert len(calls) == 3 and len({tuple(o) for o in p.fusion_orders}) == 3
    assert p.fusion_orders == permutation_orders(4, 3, {"question": "Capital of France?"}), "seeded: reruns agree"
    sent = sorted(tuple(shown(call)) for call in calls)
    assert sent == sorted(tuple(pool[i]["answer"] for i in order) for order in p.fusion_orders), "orders recorded"
    firsts = [pool[order[0]]["answer"] for order in p.fusion_orders]
    assert firsts == ["Lyon", "Paris", "Paris"] and p.answer == "Paris", "the consensus of the three fusions"
    assert p.permutation_index in (1, 2) and len(p.permutation_scores) == 3


def test_permutation_orders_are_distinct_seeded_and_bounded():
    orders = permutation_orders(5, 6, {"q": "a"})
    assert orders[:2] == [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]] and len({tuple(o) for o in orders}) == 6
    assert orders == permutation_orders(5, 6, {"q": "a"}) != permutation_orders(5, 6, {"q": "b"})
    assert permutation_orders(3, 10, {}) and len(permutation_orders(3, 10, {})) == 6
    assert len(permutation_orders(9, 4, {})) == 4
    with pytest.raises(ValueError, match="permutations: Input should be greater than or equal to 1"):
        FuseOptions(permutations=0)
    with pytest.raises(ValueError, match="at least 2"):
        fd.core.permute.Permutations("question -> answer", k=1)


def test_a_listwise_judge_must_win_under_swapped_orders():
    pool = [{"answer": "Lyon"}, {"answer": "Paris"}, {"answer": "Marseille"}]
    always_first = scripted_lm(lambda call: {"comparison": "first", "best_candidate": 1})
    fair = scripted_lm(lambda call: {"comparison": "Paris", "best_candidate": shown(call).index("Paris") + 1})
    biased = fd.BestOfN("question -> answer", judge="listwise", judge_lm=always_first, permutations=2)
    p = biased(candidates=pool, question="Capital of France?")
    assert p.judge_orders == [[0, 1, 2], [2, 1, 0]] and p.judge_wins == [1, 0, 1] and not p.judge_consistent
    assert sorted(shown(c)[0] for c in always_first.engine.calls) == ["Lyon", "Marseille"], "both orders shown"
    good = fd.BestOfN("question -> answer", judge="listwise", judge_lm=fair, permutations=2)
    q = good(candidates=pool, question="Capital of France?")
    assert q.answer == "Paris" and q.judge_consistent and q.judge_wins == [0, 2, 0]
    with pytest.raises(ValueError, match="needs judge='listwise'"):
        fd.BestOfN("question -> answer", permutations=2)


def test_a_judge_down_in_every_order_is_named_and_fallback_select_votes():
    pool = [{"answer": "Paris"}, {"answer": "Lyon"}, {"answer": "Lyon"}]
    down = scripted_lm(lambda call: {"comparison": "-", "best_candidate": 1}, fail=lambda call: True)
    raising = fd.BestOfN("question -> answer", judge="listwise", judge_lm=down, permutations=2)
    with pytest.raises(fd.SelectionError, match="scripted failure of request"):  # the cause, not "no valid pick"
        raising(candidates=pool, question="Capital?")
    voting = fd.BestOfN("question -> answer", judge="listwise", judge_lm=down, permutations=2, fallback="select")
    p = voting(candidates=pool, question="Capital?")
    assert p.answer == "Lyon" and "scripted failure of request" in p.selection_error  # the majority vote
    assert p.judge_orders == [[0, 1, 2], [2, 1, 0]] and len(p.judge_failures) == 2 and not p.judge_consistent


def test_one_order_failing_is_reported_beside_the_wins():
    fair = scripted_lm(lambda call: {"comparison": "Paris", "best_candidate": shown(call).index("Paris") + 1},
                       fail=lambda call: call.index == 0)  # fmt: skip
    p = fd.BestOfN("question -> answer", judge="listwise", judge_lm=fair, permutations=2)(
        candidates=[{"answer": "Lyon"}, {"answer": "Paris"}], question="Capital of France?")  # fmt: skip
    assert p.answer == "Paris" and p.judge_wins == [0, 1] and not p.judge_consistent
    assert len(p.judge_failures) == 1 and "scripted failure" in p.judge_failures[0]


def test_a_permutation_judge_that_is_down_keeps_the_consensus_fusion_not_a_fusor_failure():
    fusor = scripted_lm(first_shown, model="scripted/fusor")
    down = scripted_lm(lambda call: {"comparison": "-", "best_candidate": 1}, fail=lambda call: True)
    fused = fd.FusionOfN("question -> answer", fusor_lm=fusor, permutations=3, permutation_pick="listwise",
                         judge_lm=down)  # fmt: skip
    p = fused(candidates=[{"answer": "Lyon"}, {"answer": "Paris"}, {"answer": "Paris"}], question="Capital?")
    assert p.answer == "Paris" and "scripted failure" in p.permutation_pick_error
    assert not p.get("fusion_error") and len(fusor.engine.calls) == 3
