"""The real ``lmms-eval`` command on a local task (--include_path): outputs against fm.apply / continuation_logprob."""

from __future__ import annotations

import localtask
import pytest
import reference

GENERATING = ("chat_future_b1", "chat_future_b4", "simple_mma_b4", "simple_mma_layers_b4", "simple_v2v_kernel_b3")
SCORING = ("simple_mma_b4", "simple_mma_layers_b4", "simple_v2v_kernel_b3")
UNTIL = localtask.GEN_KWARGS["until"]
MAX_NEW = localtask.GEN_KWARGS["max_new_tokens"]


def _answer(sample: dict) -> str:
    resp = sample["filtered_resps"]
    return resp[0] if isinstance(resp, list) else resp


def test_only_the_bad_configuration_failed(launch):
    assert launch.log.count("Error during evaluation") == 1, launch.log[-4000:]
    for name in GENERATING:
        assert launch.results(name)["results"], name


@pytest.mark.parametrize("name", GENERATING)
def test_generation_equals_apply_generate_each_doc_alone(launch, name):
    config = launch.configs[name]
    samples = launch.samples(name, "fm_gen")
    assert sorted(samples) == [d["id"] for d in launch.docs]
    for doc in launch.docs:
        raw = reference.raw_answer(config.pretrained, config.policy, config.merge, doc, not config.simple, MAX_NEW,
                                   config.layers)
        # lmms-eval strips answers before it logs them
        assert _answer(samples[doc["id"]]) == reference.cut(raw, UNTIL).strip(), (name, doc["id"], raw)


def test_batch_1_equals_batch_4(launch):
    one, four = launch.samples("chat_future_b1", "fm_gen"), launch.samples("chat_future_b4", "fm_gen")
    assert {k: _answer(v) for k, v in one.items()} == {k: _answer(v) for k, v in four.items()}


def test_until_cut_some_answer_and_no_answer_keeps_a_stop_string(launch):
    config = launch.configs["chat_future_b1"]
    raws = [reference.raw_answer(config.pretrained, config.policy, "none", d, True, MAX_NEW) for d in launch.docs]
    assert any(stop in raw for raw in raws for stop in UNTIL), raws  # the cut is exercised
    for name in GENERATING:
        for sample in launch.samples(name, "fm_gen").values():
            assert not any(stop in _answer(sample) for stop in UNTIL)


def test_the_policy_reaches_generation(launch):
    """Under causal the demo model answers some document differently than under mma: the policy is applied."""
    config = launch.configs["simple_mma_b4"]
    samples = launch.samples("simple_mma_b4", "fm_gen")
    causal = {d["id"]: reference.cut(reference.raw_answer(config.pretrained, "causal", "none", d, False, MAX_NEW),
                                     UNTIL).strip() for d in launch.docs}
    assert any(_answer(samples[k]) != causal[k] for k in causal)


@pytest.mark.parametrize("name", SCORING)
def test_multiple_choice_losses_are_minus_continuation_logprob(launch, name):
    """Each choice's logged value is -fm.continuation_logprob (lmms-eval 0.7.3 ranks choices by argmin),
    its greedy flag is greedy decoding under the policy, and the policy (and a layer schedule) changes the scores."""
    config = launch.configs[name]
    samples = launch.samples(name, "fm_mc")
    policy_matters = schedule_matters = False
    for doc in launch.docs:
        logged = [(float(loss), greedy in (True, "True")) for loss, greedy in samples[doc["id"]]["filtered_resps"]]
        expected = reference.choice_scores(config.pretrained, config.policy, config.merge, doc, localtask.CHOICES,
                                           config.layers)
        causal = reference.choice_scores(config.pretrained, "causal", "none", doc, localtask.CHOICES)
        every_layer = reference.choice_scores(config.pretrained, config.policy, config.merge, doc, localtask.CHOICES)
        assert [g for _, g in logged] == [g for _, g in expected], (name, doc["id"])
        assert [loss for loss, _ in logged] == pytest.approx([-lp for lp, _ in expected], abs=1e-4), (name, doc["id"])
        policy_matters |= any(abs(a[0] - b[0]) > 1e-3 for a, b in zip(expected, causal, strict=True))
        schedule_matters |= any(abs(a[0] - b[0]) > 1e-3 for a, b in zip(expected, every_layer, strict=True))
    assert policy_matters
    assert schedule_matters == (config.layers is not None)


def test_multiple_choice_accuracy_is_that_of_the_most_likely_choice(launch):
    """acc is the share of documents whose most likely choice is the label. Had the plugin returned
    log-probs (lmms-eval's documented contract), lmms-eval's argmin would have picked the least likely
    choice: on these documents that gives a different accuracy, so this test tells the two apart."""
    config = launch.configs["simple_mma_b4"]
    best, worst, any_greedy = [], [], False
    for doc in launch.docs:
        scores = reference.choice_scores(config.pretrained, config.policy, config.merge, doc, localtask.CHOICES)
        logprobs = [lp for lp, _ in scores]
        best.append(float(logprobs.index(max(logprobs)) == doc["label"]))
        worst.append(float(logprobs.index(min(logprobs)) == doc["label"]))
        any_greedy |= any(g for _, g in scores)
    assert sum(best) != sum(worst) and any_greedy
    acc = launch.results("simple_mma_b4")["results"]["fm_mc"]["acc,none"]
    assert acc == pytest.approx(sum(best) / len(best))


def test_loglikelihood_task_scores_the_doc_to_target(launch):
    """output_type loglikelihood (the plugin crashed on its doc_to_target): each document's logged pair is
    (-fm.continuation_logprob of " answer", greedy decoding under the policy says it); the task's own
    process_results works around lmms-eval 0.7.3's (localtask.py)."""
    config = launch.configs["simple_mma_b4"]
    samples = launch.samples("simple_mma_b4", "fm_ll")
    for doc in launch.docs:
        loss, greedy = samples[doc["id"]]["filtered_resps"]
        [(logprob, said)] = reference.choice_scores(config.pretrained, config.policy, config.merge, doc, [doc["answer"]])
        assert float(loss) == pytest.approx(-logprob, abs=1e-4) and (greedy in (True, "True")) == said, doc["id"]
    nll = launch.results("simple_mma_b4")["results"]["fm_ll"]["nll,none"]
    assert nll == pytest.approx(sum(float(s["nll"]) for s in samples.values()) / len(samples))


def test_bad_policy_fails_clearly(launch):
    assert "futuremask: unknown mask policy 'nonsense'; choose one of: causal, future" in launch.log
    assert not list((launch.root / "out" / "chat_bad_policy").glob("*/*_samples_*.jsonl"))
