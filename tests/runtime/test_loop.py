"""The live adaptive loop around the synthetic testbed backbone: decisions, fallbacks, trace logging."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.predictors import calibrator, card
from PIL import Image

from ade_runtime.backbones.base import EditRequest
from ade_runtime.errors import InputError
from ade_runtime.loop import AdaptiveEditor
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.testbed import SyntheticBackbone, World, online_scores
from ade_runtime.testbed.imageio import make_image
from ade_runtime.traces import TraceDataset, TraceWriter
from ade_runtime.traces.serving import FAILED_LOG, log_request


@pytest.fixture(scope="module")
def requests_():
    world = World(seed=3)
    out = []
    for i in range(6):
        r = world.sample_request(np.random.default_rng(100 + i))
        out.append(
            EditRequest(make_image(r.source, r.source, world.size), r.instruction, f"req-{i}", r.category)
        )
    return out


def keys(result):
    return [a.step.key for a in result.attempts]


def test_single_and_best_of_8_spend_what_they_say(requests_):
    bb = SyntheticBackbone()
    preds = Predictors(calibrator=calibrator(0.0, weight=8.0))
    single = AdaptiveEditor(bb, preds, policy="single", scorer=online_scores).edit(requests_[0])
    assert keys(single) == [(0, 0, 0)] and single.stop_reason == "budget"
    b8 = AdaptiveEditor(bb, preds, policy="best_of_8", scorer=online_scores).edit(requests_[0])
    assert keys(b8) == [(c, 0, 0) for c in range(8)]
    assert b8.nfe == 8 * single.nfe
    confs = {a.step.key: a.confidence for a in b8.attempts}
    assert b8.chosen == max(confs, key=confs.get) and b8.confidence == max(confs.values())


def test_ade_stops_at_tau_high(requests_):
    preds = Predictors(card=card(), calibrator=calibrator(bias=6.0))  # confidence ~0.998 everywhere
    res = AdaptiveEditor(SyntheticBackbone(), preds, policy="ade", scorer=online_scores).edit(requests_[1])
    assert keys(res) == [(0, 0, res.reasoning_tokens)] and res.stop_reason == "confident"
    assert res.decisions[-2]["action"] == "accept"


def test_ade_refines_between_thresholds_then_moves_on(requests_):
    policy = PolicyConfig(tau_high=0.9, tau_low=0.2, s_max=3, default_budget=5, use_card=False)
    preds = Predictors(calibrator=calibrator(bias=0.0))  # confidence 0.5: refine until s_max
    res = AdaptiveEditor(SyntheticBackbone(), preds, policy=policy, scorer=online_scores).edit(requests_[2])
    assert keys(res) == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 0, 0), (1, 1, 0)]
    assert res.stop_reason == "budget"
    # refinement rounds start from the previous round's output
    assert res.attempts[1].output is not None and res.attempts[0].output.image is not None


def test_low_confidence_abandons_candidates(requests_):
    policy = PolicyConfig(tau_high=0.9, tau_low=0.2, s_max=3, default_budget=3, use_card=False)
    res = AdaptiveEditor(
        SyntheticBackbone(), Predictors(calibrator=calibrator(bias=-6.0)), policy=policy, scorer=online_scores
    ).edit(requests_[2])
    assert keys(res) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]


class FailingOn:
    """The testbed backbone, except that chosen candidates raise (a backbone fault in production)."""

    def __init__(self, bad: set[int]):
        self.inner = SyntheticBackbone()
        self.bad = bad
        self.name = self.inner.name
        self.supports_preview = self.inner.supports_preview
        self.supports_mask = self.inner.supports_mask
        self.supports_reasoning = self.inner.supports_reasoning

    def prepare(self, request):
        return self.inner.prepare(request)

    def run(self, state, spec):
        if spec.candidate in self.bad:
            raise RuntimeError("CUDA error: device-side assert (simulated)")
        return self.inner.run(state, spec)


def test_backbone_failure_is_recorded_and_the_request_completes(requests_, tmp_path):
    res = AdaptiveEditor(
        FailingOn({0, 2}),
        Predictors(calibrator=calibrator(0.0, 8.0)),
        policy="best_of_4",
        scorer=online_scores,
    ).edit(requests_[3])
    assert [f["key"][0] for f in res.failures if f["stage"] == "backbone"] == [0, 2]
    assert res.image is not None and res.chosen[0] in (1, 3)
    with TraceWriter(tmp_path) as w:
        rec = log_request(w, res.request, res, "bagel")
    assert [a.candidate for a in rec.attempts] == [1, 3]
    assert [f["key"][0] for f in rec.meta["ade"]["failures"]] == [0, 2]


def test_every_attempt_failing_is_logged_not_lost(requests_, tmp_path):
    res = AdaptiveEditor(
        FailingOn(set(range(8))),
        Predictors(calibrator=calibrator(0.0)),
        policy="best_of_4",
        scorer=online_scores,
    ).edit(requests_[3])
    assert res.image is None and res.chosen is None and len(res.failures) == 4
    with TraceWriter(tmp_path) as w:
        assert log_request(w, res.request, res, "bagel") is None
    line = (tmp_path / FAILED_LOG).read_text().strip()
    assert '"id": "req-3"' in line


def test_missing_card_falls_back_to_the_fixed_budget(requests_):
    policy = PolicyConfig(default_budget=2, tau_high=0.99, tau_low=0.0, s_max=1)
    res = AdaptiveEditor(
        SyntheticBackbone(), Predictors(calibrator=calibrator(0.0)), policy=policy, scorer=online_scores
    ).edit(requests_[4])
    assert res.budget == 2 and len(res.attempts) == 2
    assert res.failures[0]["stage"] == "card" and res.failures[0]["fallback"] == "default_budget"


def test_card_budget_and_tokens_drive_the_loop(requests_):
    c = card(levels=(1, 2, 3))
    pred = c.predict(requests_[0].instruction, requests_[0].image)
    policy = PolicyConfig(tau_high=0.99, tau_low=0.0, s_max=1, card_quantile=0.9)
    res = AdaptiveEditor(
        SyntheticBackbone(),
        Predictors(card=c, calibrator=calibrator(0.0)),
        policy=policy,
        scorer=online_scores,
    ).edit(requests_[0])
    assert res.budget == pred.quantile(0.9) == len(res.attempts)
    assert res.reasoning_tokens == pred.reasoning_tokens
    assert {a.step.reasoning_tokens for a in res.attempts} == {pred.reasoning_tokens}


def test_nan_scores_never_select(requests_):
    calls = {"n": 0}

    def scorer(src, out, text):
        calls["n"] += 1
        s = online_scores(src, out, text)
        return {"clip_t": float("nan") if calls["n"] % 2 else s["clip_t"]}

    res = AdaptiveEditor(
        SyntheticBackbone(), Predictors(calibrator=calibrator(0.0, 8.0)), policy="best_of_4", scorer=scorer
    ).edit(requests_[5])
    nan_keys = {a.step.key for a in res.attempts if math.isnan(a.scores["clip_t"])}
    assert len(nan_keys) == 2 and res.chosen not in nan_keys


def test_trace_of_a_served_request_validates(requests_, tmp_path):
    preds = Predictors(card=card(), calibrator=calibrator(0.0, 8.0))
    res = AdaptiveEditor(SyntheticBackbone(), preds, policy="ade", scorer=online_scores).edit(requests_[0])
    with TraceWriter(tmp_path) as w:
        log_request(w, res.request, res, "bagel")
    ds = TraceDataset(tmp_path, images="decode")
    recs = list(ds)
    assert ds.rejects == [] and len(recs) == 1
    rec = recs[0]
    assert all(a.judge is None for a in rec.attempts)
    assert rec.meta["ade"]["budget"] == res.budget and rec.meta["ade"]["decisions"] == res.decisions
    assert [a.key for a in rec.attempts] == keys(res)
    assert all("confidence" in a.scores for a in rec.attempts)


@pytest.mark.parametrize(
    "image, text, match",
    [
        (Image.new("RGB", (8, 8)), "make it blue", "between 16"),
        (Image.new("RGB", (64, 64)), "   ", "empty"),
        (Image.new("RGB", (64, 64)), "x" * 3000, "limit is"),
        (Image.new("CMYK", (64, 64)), "make it blue", "convert it to RGB"),
    ],
)
def test_inputs_are_validated(image, text, match):
    with pytest.raises(InputError, match=match):
        AdaptiveEditor(SyntheticBackbone(), Predictors(calibrator=calibrator(0.0))).edit(
            EditRequest(image, text)
        )


def test_logged_testbed_traffic_can_be_judged_exactly(requests_, tmp_path):
    """PNG text chunks survive the trace writer, so the testbed judge can label logged requests."""
    from ade_runtime.testbed import judge_attempt
    from ade_runtime.traces import load_records

    res = AdaptiveEditor(
        SyntheticBackbone(),
        Predictors(calibrator=calibrator(0.0, 8.0)),
        policy="best_of_4",
        scorer=online_scores,
    ).edit(requests_[1])
    with TraceWriter(tmp_path) as w:
        log_request(w, res.request, res, "testbed:bagel")
    (rec,), _ = load_records(tmp_path, images="decode")
    src = Image.open(rec.resolve(rec.source_image))
    for a in rec.attempts:
        j = judge_attempt(src, Image.open(rec.resolve(a.image)), rec.instruction)
        live = judge_attempt(
            res.request.image,
            next(e for e in res.attempts if e.step.key == a.key).output.image,
            rec.instruction,
        )
        assert j == live


def test_served_traces_state_the_certified_claim_of_the_thresholds_they_run(requests_, tmp_path):
    claim = {
        "status": "certified",
        "claim": ">= reference mean score - 0.02 at delta = 0.1",
        "risk": "margin",
        "target": 0.02,
        "delta": 0.1,
        "n_certify": 600,
        "reference": "best_of_4",
        "compute_share": 0.4,
    }
    cal = calibrator(0.0, 8.0)
    cal.config.claim = claim
    preds = Predictors(card=card(), calibrator=cal)
    res = AdaptiveEditor(SyntheticBackbone(), preds, policy="ade", scorer=online_scores).edit(requests_[0])
    with TraceWriter(tmp_path / "ade") as w:
        log_request(w, res.request, res, "bagel")
    rec = next(iter(TraceDataset(tmp_path / "ade", images="none")))
    assert rec.meta["ade"]["claim"] == claim
    # a preset the certificate does not cover (Best-of-8 here) carries no claim
    b8 = AdaptiveEditor(SyntheticBackbone(), preds, policy="best_of_8", scorer=online_scores).edit(
        requests_[0]
    )
    assert b8.claim is None
