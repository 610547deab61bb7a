"""The critique's refine-or-fresh rule in the loop and in replay: the same choice per attempt, so live
and replay agree request by request; with threshold 0 (the default) nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.grid import judged_grid
from runtime.test_cli_new_user import tiny_critique
from runtime.test_verifier_cascade import POLICY, cascade_calibrator

from ade_runtime.loop import AdaptiveEditor
from ade_runtime.offline import Overhead, replay_signals
from ade_runtime.offline.signals import critique_signals, record_signals
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.bundle import Predictors
from ade_runtime.testbed import SyntheticBackbone, online_scores
from ade_runtime.testbed.imageio import load_png
from ade_runtime.testbed.reward import EmulatedRewardModel

N = 10


def _scorer(src, out, instruction):
    return {
        **online_scores(src, out, instruction),
        **EmulatedRewardModel().verify(src, out, instruction).scores,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    crit = tiny_critique()
    requests, records = judged_grid(
        tmp_path_factory.mktemp("grid"), n=N, seed=21, prefix="r", candidates=3, rounds=2, levels=[0],
        scorer=_scorer, critique=crit,
    )  # fmt: skip
    pointing = []
    for rec in records.values():
        src = load_png(rec.resolve(rec.source_image))
        for a in rec.attempts:
            pointing.append(
                crit.predict(src, load_png(rec.resolve(a.image)), rec.instruction).pointing_confidence
            )
    return crit, requests, records, float(np.median(pointing))


def test_refine_rule_live_equals_replay(setup):
    crit, requests, records, median = setup
    crit.config.refine_threshold = median  # about half the failing attempts give way to a fresh candidate
    policy = PolicyConfig(**{**POLICY.to_dict(), "tau_high": 0.99, "tau_low": 0.0, "max_candidates": 3})
    cal = cascade_calibrator(policy)
    editor = AdaptiveEditor(
        SyntheticBackbone(),
        Predictors(critique=crit, calibrator=cal),
        policy=policy,
        scorer=online_scores,
        verifier=EmulatedRewardModel(),
    )
    reasons = []
    for req in requests:
        live = editor.edit(req)
        rec = records[req.id]
        cp, refine = critique_signals(rec, crit)
        assert refine is not None and set(refine) == {a.key for a in rec.attempts}
        sig = record_signals(rec, cal, critique_p=cp, refine_ok=refine)
        rep = replay_signals(rec, policy, sig, overhead=Overhead(verify_s=1.0))
        assert (live.chosen, live.nfe, len(live.verifier_calls)) == (rep.chosen, rep.nfe, rep.verifier_calls)
        assert [d["action"] for d in live.decisions] == [d["action"] for d in rep.decisions], req.id
        reasons += [d["reason"] for d in live.decisions]
    assert "critique_unsure_where" in reasons and "tau_low<=confidence<tau_high" in reasons


def test_threshold_zero_always_refines(setup):
    crit, requests, records, _ = setup
    crit.config.refine_threshold = 0.0
    rec = records[requests[0].id]
    _, refine = critique_signals(rec, crit)
    assert refine is None  # replay then refines as before
    assert crit.should_refine(crit.predict(requests[0].image, requests[0].image, requests[0].instruction))
