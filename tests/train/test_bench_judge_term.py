"""The bench's pixels-only variant removes exactly the testbed clip_t's judge term and nothing else."""

from __future__ import annotations

import pytest
from helpers import FIXTURE_SMALL

from ade_runtime.testbed import online_scores
from ade_runtime.testbed.imageio import load_png
from ade_runtime.traces import load_records
from ade_train.bench.judge_term import strip_term, write_stripped


def test_strip_term_equals_scoring_with_the_term_switched_off(tmp_path):
    records, _ = load_records(FIXTURE_SMALL, images="none")
    rec = records[0]
    (stripped,) = strip_term([rec])
    src = load_png(rec.resolve(rec.source_image))
    for a, b in zip(rec.attempts[:6], stripped.attempts[:6], strict=True):
        off = online_scores(src, load_png(rec.resolve(a.image)), rec.instruction, semantic_weight=0.0)
        assert b.scores["clip_t"] == pytest.approx(off["clip_t"], abs=1e-6)
        assert {k: v for k, v in b.scores.items() if k != "clip_t"} == {
            k: v for k, v in a.scores.items() if k != "clip_t"
        }
    assert rec.attempts[0].scores["clip_t"] != stripped.attempts[0].scores["clip_t"]  # the input is untouched
    out = write_stripped(FIXTURE_SMALL, tmp_path / "px")
    again, rejects = load_records(out, images="header")
    assert not rejects and len(again) == len(records)
    assert again[0].attempts[0].scores["clip_t"] == pytest.approx(stripped.attempts[0].scores["clip_t"])
