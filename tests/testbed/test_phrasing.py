"""Phrasing families of the testbed: every family reads back to its edits, a grammar-only world is the
world it was before families existed, the held-out family's words appear in no training family, and
the generator records each request's family."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from ade_runtime.errors import InputError
from ade_runtime.testbed import World
from ade_runtime.testbed.instructions import parse, phrase
from ade_runtime.testbed.phrasing import (
    _JOINERS,
    _SYNONYMS,
    _WRAPPERS,
    FAMILIES,
    HELDOUT_FAMILY,
    TRAINING_FAMILIES,
    normalize,
    rephrase,
)


def _requests(n: int, seed: int = 0, **kw):
    world, rng = World(seed=seed, **kw), np.random.default_rng(seed)
    return [world.sample_request(rng) for _ in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_parses_back_to_its_edits(family):
    for i, r in enumerate(_requests(400, seed=3)):
        text = rephrase(r.edits, family, np.random.default_rng(i))
        assert parse(text) == r.edits, (family, text)


def test_families_differ_from_the_grammar_and_from_each_other():
    reqs = _requests(200, seed=4)
    texts = {
        f: [rephrase(r.edits, f, np.random.default_rng(i)) for i, r in enumerate(reqs)] for f in FAMILIES
    }
    for f in FAMILIES[1:]:
        same = sum(a == b for a, b in zip(texts["grammar"], texts[f], strict=True))
        assert same == 0, f"{f}: {same} texts equal to the grammar's"
    assert any("?" in t for t in texts["polite"])
    assert any(t.startswith(("I'd like", "I want", "Help me", "It would", "My wish")) for t in texts["wish"])
    # typos: some casual words are not in the grammar's vocabulary but normalize fixes them
    assert any(normalize(t) != t.lower().rstrip(".") for t in texts["casual"])


def test_heldout_words_are_unseen_in_training_families():
    heldout = {s for _, ho in _SYNONYMS.values() for s in ho}
    training = {s for tr, _ in _SYNONYMS.values() for s in tr}
    assert heldout and not heldout & training
    assert not set(_WRAPPERS[HELDOUT_FAMILY]) & {
        w for f in TRAINING_FAMILIES if f in _WRAPPERS for w in _WRAPPERS[f]
    }
    assert not set(_JOINERS[HELDOUT_FAMILY]) & {
        j for f in TRAINING_FAMILIES if f in _JOINERS for j in _JOINERS[f]
    }
    reqs = _requests(300, seed=5, phrasing=TRAINING_FAMILIES)
    words = " ".join(r.instruction.lower() for r in reqs)
    for s in heldout:
        assert f" {s} " not in f" {words} ", s


def test_grammar_only_world_is_unchanged():
    """The family draw has its own stream: a grammar-only world writes what it wrote before families
    existed, and a mixed world samples the same requests in other words."""
    a = _requests(50, seed=6)
    b = _requests(50, seed=6, phrasing=("grammar",))
    assert [r.instruction for r in a] == [r.instruction for r in b]
    assert [phrase(r.edits, np.random.default_rng(0)) for r in a]  # the grammar's own writer still works
    mixed = _requests(50, seed=6, phrasing=FAMILIES)
    assert [r.edits for r in mixed] == [r.edits for r in a]  # same requests, other words
    assert set(collections.Counter(r.phrasing for r in mixed)) == set(FAMILIES)
    for r, m in zip(a, mixed, strict=True):
        assert (m.instruction == r.instruction) == (m.phrasing == "grammar")


def test_unknown_family_and_gibberish_are_clear_errors():
    with pytest.raises(InputError, match="phrasing"):
        World(phrasing=("shouting",))
    with pytest.raises(InputError, match="unknown phrasing family"):
        rephrase(_requests(1)[0].edits, "shouting", np.random.default_rng(0))
    with pytest.raises(InputError, match="does not understand"):
        parse("Please make it pop, thanks.")


def test_generator_records_the_family(tmp_path):
    from ade_runtime.testbed.generate import generate_dataset
    from ade_runtime.traces import load_records

    generate_dataset(
        tmp_path / "d", n_requests=12, seed=1, progress=False, candidates=1, rounds=1,
        reasoning_levels=(0,), image_every=100, workers=1, phrasing=("polite", "casual"),
    )  # fmt: skip
    recs, rejects = load_records(tmp_path / "d")
    assert not rejects
    assert {r.meta["phrasing"] for r in recs} == {"polite", "casual"}
    assert all(parse(r.instruction) for r in recs)
    gen = json.loads((tmp_path / "d" / "generation.json").read_text())
    assert gen["phrasing"] == ["polite", "casual"]
    generate_dataset(
        tmp_path / "g", n_requests=2, seed=1, progress=False, candidates=1, rounds=1,
        reasoning_levels=(0,), image_every=100, workers=1,
    )  # fmt: skip
    assert "phrasing" not in json.loads((tmp_path / "g" / "generation.json").read_text())
