"""VIEScore answer parsing and the score mapping: given strings and property tests."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ade_runtime.predictors.regions import box_iou
from ade_runtime.stats import spearman
from ade_runtime.traces.records import Flaw
from ade_train.judge.agree import cohen_kappa, match_flaws
from ade_train.judge.viescore import (
    MalformedAnswer,
    combine,
    normalise_box,
    parse_answer,
    pq_prompt,
    sc_prompt,
)


@pytest.mark.parametrize(
    "text, scores",
    [
        ('{"score": [7, 8], "reasoning": "fine"}', [7, 8]),
        ('Sure!\n```json\n{"score": [3, 10], "reasoning": "x"}\n```\nHope it helps', [3, 10]),
        ('{"Score": ["6", 9.5], "Reasoning": "caps"}', [6, 9.5]),
        ('{"score": [5, 6, 7]}', [5, 6]),
        (
            '{"score" : [4, 5], "reasoning": "unterminated',
            [4, 5],
        ),  # broken JSON: the score list is still read
    ],
)
def test_parse_accepts_usual_answer_shapes(text, scores):
    assert parse_answer(text).scores == scores


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("the edit looks good", "no JSON"),
        ('{"reasoning": "no score"}', "no 'score'"),
        ('{"score": [11, 3]}', "[0, 10]"),
        ('{"score": [5]}', "expected 2"),
        ('{"score": ["high", "low"]}', "non-number"),
        ('{"score": [NaN, 3]}', "[0, 10]"),
    ],
)
def test_parse_rejects_malformed_answers_with_a_reason(text, fragment):
    with pytest.raises(MalformedAnswer, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_answer(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_crashes_on_arbitrary_text(text):
    try:
        ans = parse_answer(text)
    except MalformedAnswer:
        return
    assert len(ans.scores) == 2 and all(0 <= s <= 10 for s in ans.scores)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0, 10), min_size=2, max_size=2),
    st.lists(st.floats(0, 10), min_size=2, max_size=2),
    st.floats(0, 1),
)
def test_score_mapping_is_viescore_overall_over_ten(sc, pq, threshold):
    a = parse_answer(json.dumps({"score": sc}))
    b = parse_answer(json.dumps({"score": pq}))
    lab = combine(a, b, pass_threshold=threshold)
    expected = math.sqrt(min(sc) * min(pq)) / 10
    assert lab.score == pytest.approx(expected) and 0.0 <= lab.score <= 1.0
    assert lab.passed == (expected >= threshold)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True), st.integers(-5000, 5000), st.text(max_size=3)),
        min_size=0,
        max_size=5,
    ),
    st.sampled_from(["pixels", "norm1000", "unit"]),
)
def test_normalised_boxes_are_always_valid_or_dropped(raw, fmt):
    box = normalise_box(raw, fmt, 100, 80)
    if box is not None:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_prompts_carry_the_instruction_and_box_convention():
    p = sc_prompt("Turn the red mug blue", "pixels")
    assert "Turn the red mug blue" in p and "absolute pixel" in p and '"score"' in p and "wrong_color" in p
    assert "0-1000" in sc_prompt("x", "norm1000")
    assert "naturalness" in pq_prompt() and "artifacts" in pq_prompt()
    with pytest.raises(ValueError, match="box_format"):
        sc_prompt("x", "inches")


def test_agreement_statistics_on_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # average ranks for ties
    assert spearman([1, 1], [1, 2]) is None
    assert cohen_kappa([True, False, True, False], [True, False, True, False]) == pytest.approx(1.0)
    # p_o = 0.5, p_e = 0.5 -> kappa 0
    assert cohen_kappa([True, True, False, False], [True, False, True, False]) == pytest.approx(0.0)
    assert cohen_kappa([True, True], [True, True]) is None
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3)
    fa = (Flaw("a", (0, 0, 0.5, 0.5)), Flaw("b", (0.6, 0.6, 1, 1)))
    fb = (Flaw("b", (0.6, 0.6, 1, 1)), Flaw("a", (0, 0, 0.4, 0.5)))
    m = match_flaws(fa, fb)
    assert [(x.kind, y.kind, round(iou, 3)) for x, y, iou in m] == [("b", "b", 1.0), ("a", "a", 0.8)]
