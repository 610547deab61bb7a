"""CARD's labels on a v1 trace dataset the project did not generate (``helpers.foreign``: own categories,
backbone, token levels, grid; harder adverbs need more attempts)."""

from __future__ import annotations

from helpers.foreign import write_foreign_traces

from ade_runtime.policy import budget
from ade_runtime.traces import load_records


def test_labels_on_foreign_dataset_are_sane(tmp_path):
    root = write_foreign_traces(tmp_path / "acme", n=60)
    records, rejects = load_records(root)
    assert len(records) == 60 and not rejects
    unit = budget.cost_unit(records)
    assert unit == "nfe"  # no latency_s in these traces
    levels = budget.budget_levels(records)
    assert levels == [1, 2, 3, 4, 6]  # K in 1..3 times R in 1..2
    by_difficulty: dict[int, list[int]] = {}
    for rec in records:
        label = budget.budget_label(rec, levels, unit)
        assert label is not None
        if rec.meta["difficulty"] == 3:
            assert label.censored and label.level_index == len(levels)
        if not label.censored:
            assert label.point.attempts <= levels[label.level_index]
            assert label.reasoning_tokens in (0, 96)
        by_difficulty.setdefault(rec.meta["difficulty"], []).append(label.level_index)
    means = [sum(v) / len(v) for _, v in sorted(by_difficulty.items())]
    assert means == sorted(means) and means[0] < means[-1]
