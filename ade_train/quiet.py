"""Narrow filters for third-party noise in ``ade-train`` output (each names exactly one message).

- Lightning's "Tip: ... try installing litlogger" line (logged at INFO on every Trainer).
- Lightning's pytree ``isinstance(treespec, LeafSpec)`` deprecation warning (torch >= 2.9).
- The "Total Flops 0" line and the all-zero FLOPs column of Lightning's model summary: ADE's
  modules are not FLOP-counted; ``ModelSummaryWithoutZeroFlops`` prints the same table without them
  (and Lightning's note that it replaced the default summary is dropped).
- W&B's "The anonymous setting has no effect" warning is avoided in ``tracking.make_logger``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

_log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


# substrings of the Lightning INFO lines dropped: the litlogger advert, and the note that our own
# model summary callback replaced Lightning's default one
_DROPPED = ("try installing [litlogger]", "Skipping setting a default `ModelSummary` callback")


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(d in str(record.msg) for d in _DROPPED)


def install() -> None:
    """Install the filters (idempotent); called by every ``ade-train`` job before its Trainer."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLitLoggerTip())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


class ModelSummaryWithoutZeroFlops(ModelSummary):
    """Lightning's plain model summary, minus its "Total Flops" line when the count is 0."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if not total_flops:  # the per-layer FLOPs column is all zeros too
            summary_data = [col for col in summary_data if col[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *summary_data,
        )
        if not total_flops:
            table = "\n".join(line for line in table.splitlines() if "Total Flops" not in line)
        _log.info("\n" + table)
