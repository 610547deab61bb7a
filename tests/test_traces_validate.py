"""Every rule of trace-format-v1: each rejection with its exact reason and field, through the reader.

Each case mutates one field of a valid record, writes it as a shard line next to its images and
reads the dataset back; the JSON Schema shipped with the package is checked against the same case.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ade_runtime.traces import REASONS, EditRecord, TraceDataset, load_records, record_schema, validate_record

# the shared builders live next to this file (works with or without tests/__init__.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_traces_fixtures import mutate, put_images, record_dict, write_shard  # noqa: E402

NAN, INF = float("nan"), float("inf")
SCHEMA = jsonschema.Draft202012Validator(record_schema())

# (path, value, delete, reason, field, schema_rejects): schema_rejects None = beyond JSON Schema (NaN).
CASES = [
    ("format", "ade-trace/2", False, "wrong_format", "format", True),
    ("format", None, True, "missing_field", "format", True),
    ("id", "", False, "empty_string", "id", True),
    ("id", 7, False, "wrong_type", "id", True),
    ("id", None, True, "missing_field", "id", True),
    ("instruction", " \t\n ", False, "empty_string", "instruction", True),
    ("instruction", None, False, "wrong_type", "instruction", True),
    ("instruction", "bad \ud800 surrogate", False, "invalid_unicode", "instruction", False),
    ("source_image", "/etc/passwd", False, "absolute_path", "source_image", True),
    ("source_image", "C:/data/x.png", False, "absolute_path", "source_image", True),
    ("source_image", "../outside.png", False, "path_escape", "source_image", False),
    ("source_image", "images/../../outside.png", False, "path_escape", "source_image", False),
    ("source_image", "", False, "bad_path", "source_image", True),
    ("source_image", "a\x00b.png", False, "bad_path", "source_image", True),
    ("source_image", 3, False, "wrong_type", "source_image", True),
    ("source_image", None, True, "missing_field", "source_image", True),
    ("source_image", "images/nowhere.png", False, "missing_image", "source_image", False),
    ("backbone", "", False, "empty_string", "backbone", True),
    ("backbone", None, True, "missing_field", "backbone", True),
    ("category", 3, False, "wrong_type", "category", True),
    ("meta", [], False, "wrong_type", "meta", True),
    ("meta", None, False, "wrong_type", "meta", True),
    ("meta.x", INF, False, "infinity", "meta.x", None),
    ("extra_field", {"deep": [1, NAN]}, False, "nan", "extra_field.deep[1]", None),
    ("attempts", [], False, "empty_attempts", "attempts", True),
    ("attempts", {}, False, "wrong_type", "attempts", True),
    ("attempts", None, True, "missing_field", "attempts", True),
    ("attempts.0", 5, False, "wrong_type", "attempts[0]", True),
    ("attempts.0.candidate", True, False, "wrong_type", "attempts[0].candidate", True),
    ("attempts.0.candidate", -1, False, "out_of_range", "attempts[0].candidate", True),
    ("attempts.0.candidate", 1.5, False, "wrong_type", "attempts[0].candidate", True),
    ("attempts.0.candidate", None, True, "missing_field", "attempts[0].candidate", True),
    ("attempts.1.round", "1", False, "wrong_type", "attempts[1].round", True),
    ("attempts.1.round", -2, False, "out_of_range", "attempts[1].round", True),
    ("attempts.0.reasoning_tokens", None, False, "wrong_type", "attempts[0].reasoning_tokens", True),
    ("attempts.0.reasoning_tokens", False, False, "wrong_type", "attempts[0].reasoning_tokens", True),
    ("attempts.0.prompt", 1, False, "wrong_type", "attempts[0].prompt", True),
    ("attempts.0.prompt", None, True, "missing_field", "attempts[0].prompt", True),
    ("attempts.0.image", "/abs/out.png", False, "absolute_path", "attempts[0].image", True),
    ("attempts.0.image", "images/missing.png", False, "missing_image", "attempts[0].image", False),
    ("attempts.0.image", None, True, "missing_field", "attempts[0].image", True),
    ("attempts.0.cost", None, True, "missing_field", "attempts[0].cost", True),
    ("attempts.0.cost", 28, False, "wrong_type", "attempts[0].cost", True),
    ("attempts.3.cost.nfe", -1, False, "out_of_range", "attempts[3].cost.nfe", True),
    ("attempts.3.cost.nfe", True, False, "wrong_type", "attempts[3].cost.nfe", True),
    ("attempts.3.cost.nfe", 27.5, False, "wrong_type", "attempts[3].cost.nfe", True),
    ("attempts.3.cost.nfe", None, True, "missing_field", "attempts[3].cost.nfe", True),
    ("attempts.0.cost.latency_s", -0.1, False, "out_of_range", "attempts[0].cost.latency_s", True),
    ("attempts.0.cost.latency_s", "4.2", False, "wrong_type", "attempts[0].cost.latency_s", True),
    ("attempts.0.cost.latency_s", NAN, False, "nan", "attempts[0].cost.latency_s", None),
    ("attempts.0.cost.latency_s", INF, False, "infinity", "attempts[0].cost.latency_s", None),
    ("attempts.0.scores", None, True, "missing_field", "attempts[0].scores", True),
    ("attempts.0.scores", [0.3], False, "wrong_type", "attempts[0].scores", True),
    ("attempts.0.scores.clip_t", NAN, False, "nan", "attempts[0].scores.clip_t", None),
    ("attempts.0.scores.clip_t", -INF, False, "infinity", "attempts[0].scores.clip_t", None),
    ("attempts.0.scores.clip_t", "0.3", False, "wrong_type", "attempts[0].scores.clip_t", True),
    ("attempts.0.scores.clip_t", True, False, "wrong_type", "attempts[0].scores.clip_t", True),
    ("attempts.0.judge", None, True, "missing_field", "attempts[0].judge", True),
    ("attempts.0.judge", True, False, "wrong_type", "attempts[0].judge", True),
    ("attempts.0.judge.score", 1.5, False, "out_of_range", "attempts[0].judge.score", True),
    ("attempts.0.judge.score", -0.01, False, "out_of_range", "attempts[0].judge.score", True),
    ("attempts.0.judge.score", NAN, False, "nan", "attempts[0].judge.score", None),
    ("attempts.0.judge.score", None, True, "missing_field", "attempts[0].judge.score", True),
    ("attempts.0.judge.pass", 1, False, "wrong_type", "attempts[0].judge.pass", True),
    ("attempts.0.judge.pass", None, True, "missing_field", "attempts[0].judge.pass", True),
    ("attempts.0.judge.flaws", None, True, "missing_field", "attempts[0].judge.flaws", True),
    ("attempts.0.judge.flaws", {}, False, "wrong_type", "attempts[0].judge.flaws", True),
    ("attempts.0.judge.flaws.0", "hat", False, "wrong_type", "attempts[0].judge.flaws[0]", True),
    ("attempts.0.judge.flaws.0.kind", 3, False, "wrong_type", "attempts[0].judge.flaws[0].kind", True),
    ("attempts.0.judge.flaws.0.kind", None, True, "missing_field", "attempts[0].judge.flaws[0].kind", True),
    ("attempts.0.judge.flaws.0.box", None, True, "missing_field", "attempts[0].judge.flaws[0].box", True),
    ("attempts.0.judge.flaws.0.box", [0, 0, 1], False, "bad_box", "attempts[0].judge.flaws[0].box", True),
    (
        "attempts.0.judge.flaws.0.box",
        [0.5, 0, 0.5, 1],
        False,
        "bad_box",
        "attempts[0].judge.flaws[0].box",
        False,
    ),
    (
        "attempts.0.judge.flaws.0.box",
        [0, 0.9, 1, 0.1],
        False,
        "bad_box",
        "attempts[0].judge.flaws[0].box",
        False,
    ),
    (
        "attempts.0.judge.flaws.0.box",
        [0, 0, 1.5, 1],
        False,
        "out_of_range",
        "attempts[0].judge.flaws[0].box[2]",
        True,
    ),
    (
        "attempts.0.judge.flaws.0.box",
        [0, 0, "1", 1],
        False,
        "wrong_type",
        "attempts[0].judge.flaws[0].box[2]",
        True,
    ),
    ("attempts.0.judge.flaws.0.box", [0, 0, NAN, 1], False, "nan", "attempts[0].judge.flaws[0].box[2]", None),
]

# Variations the spec allows: they must stay valid (and satisfy the schema).
VALID = [
    ("category", None, False),
    ("category", None, True),
    ("meta", None, True),
    ("meta", {"nested": {"deep": [1, "x", None, True]}}, False),
    ("attempts.0.image", None, False),
    ("attempts.0.judge", None, False),
    ("attempts.0.judge.flaws", [], False),
    ("attempts.0.scores", {}, False),
    ("attempts.0.scores.dino", 3, False),
    ("attempts.0.cost.latency_s", None, True),
    ("attempts.0.cost.latency_s", None, False),
    ("attempts.0.cost.nfe", 28.0, False),  # JSON Schema's integer: an integral number
    ("attempts.0.judge.score", 1, False),
    ("instruction", "  Färbe den Becher blau 🎨  ", False),
    ("id", " ", False),  # non-empty, nothing more
    ("unknown_top_level", {"kept": True}, False),
    ("attempts.0.unknown_attempt_field", [1, 2], False),
    ("attempts.0.judge.flaws.0.confidence", 0.5, False),
    ("source_image", "images/./req-0/../req-0/source.png", False),
]


def read_one(root, obj):
    put_images(root, record_dict("req-0"))
    write_shard(root, [json.dumps(obj, allow_nan=True)])
    records, rejects = load_records(root, images="header")
    return records, rejects


@pytest.mark.parametrize(("path", "value", "delete", "reason", "field", "schema_rejects"), CASES)
def test_each_rule_rejects_with_reason_and_field(
    tmp_path, path, value, delete, reason, field, schema_rejects
):
    obj = mutate(record_dict("req-0"), path, value, delete)
    records, rejects = read_one(tmp_path, obj)
    assert records == []
    assert len(rejects) == 1
    rej = rejects[0]
    assert (rej.reason, rej.field) == (reason, field), rej.message
    assert rej.shard == "traces-00000.jsonl" and rej.line == 1
    assert field.split("[")[0].split(".")[0] in rej.message
    assert reason in REASONS
    if schema_rejects is not None:
        assert (not SCHEMA.is_valid(obj)) == schema_rejects


@pytest.mark.parametrize(("path", "value", "delete"), VALID)
def test_allowed_variations_stay_valid(tmp_path, path, value, delete):
    obj = mutate(record_dict("req-0"), path, value, delete)
    records, rejects = read_one(tmp_path, obj)
    assert rejects == []
    assert len(records) == 1
    assert records[0].id == obj["id"]
    assert SCHEMA.is_valid(obj), list(SCHEMA.iter_errors(obj))


def test_cross_attempt_rules(tmp_path):
    base = record_dict("req-0", n_candidates=2, n_rounds=3, tokens=(0, 128))
    dup = copy.deepcopy(base)
    dup["attempts"][4] = copy.deepcopy(dup["attempts"][1])
    # round 1 of candidate 0 at 128 tokens removed: round 2 at 128 has no parent
    orphan = copy.deepcopy(base)
    orphan["attempts"] = [
        a for a in orphan["attempts"] if (a["candidate"], a["round"], a["reasoning_tokens"]) != (0, 1, 128)
    ]
    # round 1 whose round 0 exists only at another reasoning budget
    other_budget = copy.deepcopy(base)
    other_budget["attempts"] = [
        a for a in other_budget["attempts"] if (a["round"], a["reasoning_tokens"]) != (0, 128)
    ]
    put_images(tmp_path, base)
    for i, o in enumerate((dup, orphan, other_budget)):
        o["id"] = f"r{i}"
    write_shard(tmp_path, [dup, orphan, other_budget, base])
    records, rejects = load_records(tmp_path)
    assert [r.id for r in records] == ["req-0"]
    assert [(r.line, r.id, r.reason, r.field) for r in rejects] == [
        (1, "r0", "duplicate_attempt", "attempts[4]"),
        (2, "r1", "missing_parent_round", "attempts[7].round"),
        (3, "r2", "missing_parent_round", "attempts[6].round"),
    ]
    for o in (dup, orphan, other_budget):
        assert SCHEMA.is_valid(o)  # these rules are beyond JSON Schema: the validator carries them


def test_duplicate_ids_across_nested_shards_keep_the_first(tmp_path):
    obj = put_images(tmp_path, record_dict("req-0"))
    write_shard(tmp_path, [obj], "a.jsonl")
    sub = dict(obj, source_image="../" + obj["source_image"])
    sub["attempts"] = [dict(a, image="../" + a["image"]) for a in obj["attempts"]]
    write_shard(tmp_path, [sub, dict(sub, id="req-1")], "sub/b.jsonl")
    ds = TraceDataset(tmp_path)
    assert [(r.id, r.root) for r in ds] == [("req-0", tmp_path), ("req-1", tmp_path / "sub")]
    assert [(r.shard, r.line, r.id, r.reason, r.field) for r in ds.rejects] == [
        ("sub/b.jsonl", 1, "req-0", "duplicate_id", "id")
    ]


def test_several_problems_are_summarised_in_one_reject(tmp_path):
    obj = record_dict("req-0")
    obj["backbone"] = ""
    for a in obj["attempts"]:
        a["cost"]["nfe"] = -1
    records, rejects = read_one(tmp_path, obj)
    assert (rejects[0].reason, rejects[0].field) == ("empty_string", "backbone")
    assert "and 4 more" in rejects[0].message and "out_of_range@attempts[0].cost.nfe" in rejects[0].message
    problems = validate_record(obj)
    assert [p.reason for p in problems] == ["empty_string"] + ["out_of_range"] * 4


def test_problem_cap_on_huge_bad_records():
    obj = record_dict("req-0", n_candidates=1, n_rounds=1)
    obj["attempts"] = [dict(obj["attempts"][0], candidate=-1) for _ in range(10_000)]
    assert len(validate_record(obj)) == 20


def test_not_an_object_lines(tmp_path):
    write_shard(tmp_path, ["[1, 2]", '"text"', "3", "null"])
    records, rejects = load_records(tmp_path)
    assert records == []
    assert [(r.line, r.reason, r.field, r.id) for r in rejects] == [
        (i, "not_an_object", None, None) for i in range(1, 5)
    ]


def test_non_finite_literals_and_overflow_in_raw_lines(tmp_path):
    put_images(tmp_path, record_dict("req-0"))
    text = json.dumps(record_dict("req-0"))
    lines = [
        text.replace('"latency_s": 4.25', '"latency_s": 1e400', 1),
        text.replace('"clip_t": 0.27', '"clip_t": -Infinity', 1),
        text.replace('"seed": 17', '"seed": NaN', 1),
    ]
    write_shard(tmp_path, lines)
    _, rejects = load_records(tmp_path)
    assert [(r.reason, r.field) for r in rejects] == [
        ("infinity", "attempts[0].cost.latency_s"),
        ("infinity", "attempts[0].scores.clip_t"),
        ("nan", "meta.seed"),
    ]


REPO = Path(__file__).resolve().parents[1]
FORMAT_PAGE = REPO / "docs" / "trace-format-v1.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_format_page_lists_every_reason_code():
    doc = _section(FORMAT_PAGE.read_text(encoding="utf-8"), "## Reject reasons")
    rows = {
        line.split("`")[1]: line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| `")
    }
    assert set(rows) == set(REASONS)
    assert all(rows[code] == text for code, text in REASONS.items())


def _normative_parts(text: str) -> dict[str, str]:
    """The spec's rule-bearing sections, whitespace-folded (prose reflow does not count as a change)."""
    heads = ["## Layout", "## Record", "## Attempt", "## What a reader must do"]
    return {h: " ".join(_section(text, h).split()) for h in heads}


def test_format_page_states_the_same_rules_as_the_shared_spec():
    """The repository's normative page carries the contract's rules word for word (users cloning the
    project do not have ../shared). Skipped where the shared spec is not beside the clone."""
    shared = REPO.parent / "shared" / "spec" / "trace-format-v1.md"
    if not shared.is_file():
        pytest.skip("../shared/spec/trace-format-v1.md is not beside this clone")
    ours = _normative_parts(FORMAT_PAGE.read_text(encoding="utf-8"))
    theirs = _normative_parts(shared.read_text(encoding="utf-8"))
    for head, rules in theirs.items():
        assert ours[head] == rules, f"{head} of docs/trace-format-v1.md differs from the shared spec"


# -- properties: arbitrary JSON spliced anywhere into a valid record -----------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities included
    | st.text(max_size=6)
    | st.sampled_from(["", " ", "../x.png", "/abs.png", "images/req-0/source.png", "ade-trace/1"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def all_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from all_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from all_paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), value=json_values, delete=st.booleans())
def test_validator_never_raises_and_accepted_records_round_trip(data, value, delete):
    obj = record_dict("req-0", n_candidates=2, n_rounds=2)
    paths = list(all_paths(obj))
    path = data.draw(st.sampled_from(paths))
    if not path:
        obj = value
    else:
        parent = obj
        for p in path[:-1]:
            parent = parent[p]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    problems = validate_record(obj)
    assert all(p.reason in REASONS and p.message for p in problems)
    if not problems:
        # what the validator accepts, the schema accepts, and it can be written back exactly
        assert SCHEMA.is_valid(obj), list(SCHEMA.iter_errors(obj))
        rec = EditRecord.from_json(obj)
        line = json.dumps(rec.to_json(), allow_nan=False, ensure_ascii=False)
        assert EditRecord.from_json(json.loads(line)) == rec
