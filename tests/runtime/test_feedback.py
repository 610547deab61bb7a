"""Black-box tests of ade_runtime.feedback: region naming and prompt round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ade_runtime.errors import InputError
from ade_runtime.feedback import (
    FLAW_KINDS,
    REGION_BOXES,
    describe_region,
    feedback_prompt,
    parse_feedback,
    split_feedback,
)
from ade_runtime.traces.records import Flaw


def _contains(box, point):
    x0, y0, x1, y1 = box
    return x0 - 1e-9 <= point[0] <= x1 + 1e-9 and y0 - 1e-9 <= point[1] <= y1 + 1e-9


@pytest.mark.parametrize(
    ("box", "phrase"),
    [
        ((0.7, 0.4, 0.9, 0.6), "on the right"),
        ((0.05, 0.05, 0.2, 0.2), "in the top-left corner"),
        ((0.4, 0.4, 0.6, 0.6), "in the centre"),
        ((0.0, 0.0, 1.0, 1.0), "across the whole image"),
        ((0.55, 0.0, 0.95, 1.0), "in the right half"),
        ((0.0, 0.6, 1.0, 0.95), "in the bottom half"),
    ],
)
def test_describe_region_names(box, phrase):
    assert describe_region(box) == phrase


def test_describe_region_rejects_bad_boxes():
    with pytest.raises(InputError, match="x0 < x1"):
        describe_region((0.5, 0.1, 0.4, 0.3))
    with pytest.raises(InputError, match="x0, y0, x1, y1"):
        describe_region((0.1, 0.2))


def test_feedback_prompt_example():
    flaws = [Flaw("wrong_color", (0.7, 0.3, 0.9, 0.6))]
    p = feedback_prompt("Turn the red mug blue", flaws, hints={"wrong_color": "make it blue"})
    assert p == "Turn the red mug blue. The object on the right still has the wrong colour; make it blue."
    assert feedback_prompt("Turn the red mug blue", []) == "Turn the red mug blue"


_box = st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.02, 0.5), st.floats(0.02, 0.5)).map(
    lambda t: (t[0], t[1], min(1.0, t[0] + t[2]), min(1.0, t[1] + t[3]))
)
_kind = st.one_of(
    st.sampled_from(FLAW_KINDS), st.from_regex(r"[a-z][a-z0-9]{0,6}(_[a-z0-9]{1,5}){0,2}", fullmatch=True)
)


@given(
    flaws=st.lists(st.tuples(_kind, _box), max_size=4),
    instruction=st.sampled_from(["Remove the star", "Make it blue!", "x"]),
)
def test_round_trip_kinds_and_regions(flaws, instruction):
    objs = [Flaw(k, b) for k, b in flaws]
    prompt = feedback_prompt(instruction, objs)
    inst, parsed = split_feedback(prompt)
    assert [f.kind for f in parsed] == [f.kind for f in objs]
    assert inst.rstrip(".") == instruction.rstrip(".")
    for orig, got in zip(objs, parsed, strict=True):
        centre = ((orig.box[0] + orig.box[2]) / 2, (orig.box[1] + orig.box[3]) / 2)
        assert _contains(got.box, centre)
        assert got.box in REGION_BOXES.values()


def test_parse_plain_instruction_has_no_flaws():
    assert parse_feedback("Turn the red circle on the left blue.") == []


def test_bad_kind_is_refused():
    with pytest.raises(InputError, match="flaw kind"):
        feedback_prompt("Do it", [Flaw("Bad Kind!", (0.1, 0.1, 0.2, 0.2))])
