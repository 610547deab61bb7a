"""TraceDataModule: any edit-trace v1 dataset as CARD training data (features, budget labels, splits).

Reads with ``ade_runtime.traces`` (rejected lines are reported, not fatal unless nothing is valid),
splits requests by id into train / val / calibration / test (stratified by category, deterministic
from a seed through sha256, so every rank, worker and rerun sees the same split), featurizes with
``RequestFeaturizer`` through the feature cache, and labels with ``ade_runtime.policy.budget`` (the
definitions the loop and replay use). Follows Lightning's ``LightningDataModule`` recipe
(lightning-hydra-template ``src/data/``): everything deterministic happens in ``setup``.

Public API::

    dm = TraceDataModule("data/sample", out_dir="checkpoints/card")
    dm.setup("fit")
    dm.levels, dm.token_levels, dm.input_dim, dm.featurizer, dm.split_ids["calibration"]
    dm.records("calibration") -> list[EditRecord]; dm.tensors("test") -> dict of tensors
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import TensorDataset

from ade_runtime.errors import TraceError
from ade_runtime.policy import PolicyConfig, budget
from ade_runtime.predictors.features import RequestFeaturizer
from ade_runtime.traces import EditRecord, TraceDataset
from ade_train.export import DataInfo, data_source
from ade_train.loaders import SplitLoaders, require_dataset, run_paths
from ade_train.splits import SPLITS, dataset_fingerprint, display_path, split_ids, write_splits
from ade_train.summary import report_rejects

log = logging.getLogger(__name__)

TENSOR_KEYS = ("x", "level", "censor_from", "censored", "token_pass")


class TraceDataModule(SplitLoaders, LightningDataModule):
    """CARD's data: request features ``x``, loop-order budget level, censoring, P(pass) per token level."""

    def __init__(
        self,
        data: str,
        out_dir: str | None = None,
        cache_dir: str | None = None,
        text_encoder: dict[str, Any] | None = None,
        image_encoder: dict[str, Any] | None = None,
        split_fractions: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1),
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        image_check: str = "header",
        s_max: int | None = None,
    ) -> None:
        """
        Args:
            data: trace dataset directory (edit-trace v1).
            out_dir: run directory; splits.json and (without cache_dir) the feature cache go there.
            cache_dir: feature cache directory (default OUT/features; none when both are None).
            text_encoder: encoder spec (default {"kind": "hashing", "dim": 512}).
            image_encoder: encoder spec (default {"kind": "pixels"}); {"kind": "none"} for text only.
            split_fractions: train / val / calibration / test shares of the requests.
            seed: split seed (and the shuffling seed of the train loader).
            batch_size: requests per batch.
            num_workers: DataLoader workers (the tensors are in memory, 0 is usually fastest).
            image_check: reader image check: "none", "header" or "decode".
            s_max: rounds per chain of the loop-order labels (default: PolicyConfig's s_max, the
                loop's own); set it to the policy's s_max when that differs.
        """
        super().__init__()
        self.save_hyperparameters()
        self.data_dir, self.out_dir, self.cache_dir = run_paths(data, out_dir, cache_dir)
        self.text_spec = dict(text_encoder or {"kind": "hashing", "dim": 512})
        self.image_spec = dict(image_encoder or {"kind": "pixels"})
        self.split_fractions = tuple(float(f) for f in split_fractions)
        split_ids([], self.split_fractions)  # checks the fractions now, not after reading the data
        self.seed = int(seed)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.image_check = image_check
        self.s_max = int(s_max) if s_max is not None else PolicyConfig().s_max
        if self.s_max < 1:
            raise ValueError(f"s_max must be >= 1, got {s_max}")
        self._ready = False

    # -- loading ---------------------------------------------------------------------------------

    def _build_featurizer(self) -> RequestFeaturizer:
        from ade_runtime.encoders import build_image_encoder, build_text_encoder

        image = None if self.image_spec.get("kind") == "none" else build_image_encoder(self.image_spec)
        return RequestFeaturizer(build_text_encoder(self.text_spec), image)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        require_dataset(self.data_dir)
        ds = TraceDataset(self.data_dir, images=self.image_check)
        records = list(ds)
        self.rejects = list(ds.rejects)
        report_rejects("card", self.data_dir, self.rejects)
        if not records:
            raise TraceError(
                f"{self.data_dir}: no valid records ({len(self.rejects)} rejected); run `ade-traces validate` on it"
            )
        self.unit = budget.cost_unit(records)
        self.levels = budget.loop_levels(records, self.s_max)
        self.token_levels = sorted({a.reasoning_tokens for r in records for a in r.attempts})
        labelled: list[tuple[EditRecord, budget.LoopLabel]] = []
        for rec in records:
            label = budget.loop_label(rec, self.levels, self.s_max, self.unit)
            if label is not None:  # no judged attempt at all: nothing to learn from
                labelled.append((rec, label))
        self.n_unjudged = len(records) - len(labelled)
        if not labelled:
            raise TraceError(f"{self.data_dir}: no record has a judge label; CARD needs judged attempts")
        self.all_records = [r for r, _ in labelled]
        self.split_ids = split_ids(self.all_records, self.split_fractions, self.seed)
        if not self.split_ids["train"]:
            raise TraceError(
                f"{self.data_dir}: only {len(labelled)} judged records, the train split is empty"
            )
        self.featurizer = self._build_featurizer()
        cache = None
        if self.cache_dir is not None:
            from ade_runtime.encoders import FeatureCache

            cache = FeatureCache(self.cache_dir)
        x = self.featurizer.featurize(
            [r.instruction for r in self.all_records],
            [r.resolve(r.source_image) for r in self.all_records] if self.featurizer.image_encoder else None,
            cache=cache,
        )
        self._index = {r.id: i for i, r in enumerate(self.all_records)}
        n = len(labelled)
        level = torch.empty(n, dtype=torch.long)
        censor_from = torch.empty(n, dtype=torch.long)
        censored = torch.zeros(n, dtype=torch.bool)
        token_pass = torch.full((n, len(self.token_levels)), float("nan"))
        for i, (_rec, label) in enumerate(labelled):
            level[i] = label.level_index
            censored[i] = label.censored
            # censored: the request's own order ends at label.length attempts, so its need is above that
            censor_from[i] = (
                budget.level_index(self.levels, label.length + 1) if label.censored else label.level_index
            )
            for t, p in label.token_pass.items():
                token_pass[i, self.token_levels.index(t)] = p
        self.token_seconds = self._token_seconds()
        self._all = {
            "x": x, "level": level, "censor_from": censor_from, "censored": censored, "token_pass": token_pass,
        }  # fmt: skip
        self._write_splits()
        self._ready = True

    def _token_seconds(self) -> list[float]:
        """Mean cost of one attempt per token level on the train split (the trade the token choice makes)."""
        train = set(self.split_ids["train"])
        costs: dict[int, list[float]] = {t: [] for t in self.token_levels}
        for rec in self.all_records:
            if rec.id in train:
                for a in rec.attempts:
                    costs[a.reasoning_tokens].append(budget.attempt_cost(a, self.unit))
        overall = [c for v in costs.values() for c in v]
        fallback = sum(overall) / len(overall) if overall else 1.0
        return [max(1e-9, sum(v) / len(v)) if v else fallback for v in costs.values()]

    def _write_splits(self) -> None:
        if self.out_dir is None or int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
            return
        fingerprint = dataset_fingerprint(self.all_records)
        write_splits(
            self.out_dir, self.data_dir, fingerprint, self.seed, self.split_fractions, self.split_ids
        )

    # -- views -----------------------------------------------------------------------------------

    @property
    def input_dim(self) -> int:
        return self.featurizer.dim if self._ready else self._build_featurizer().dim

    def records(self, split: str) -> list[EditRecord]:
        self._check_split(split)
        return [self.all_records[self._index[i]] for i in self.split_ids[split]]

    def tensors(self, split: str) -> dict[str, torch.Tensor]:
        """``x`` [N, D], ``level`` (index, ``len(levels)`` = beyond), ``censor_from``, ``censored``,
        ``token_pass`` [N, token levels] (share of round-0 attempts passing; NaN = level not logged)."""
        self._check_split(split)
        idx = torch.tensor([self._index[i] for i in self.split_ids[split]], dtype=torch.long)
        return {k: v[idx] for k, v in self._all.items()}

    def _check_split(self, split: str) -> None:
        if not self._ready:
            raise RuntimeError("TraceDataModule.setup() has not run")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")

    def data_info(self) -> DataInfo:
        return DataInfo(
            path=display_path(self.data_dir),
            fingerprint=dataset_fingerprint(self.all_records),
            source=data_source(self.all_records),
            n_records=len(self.all_records),
            n_rejected=len(self.rejects),
            splits={s: len(v) for s, v in self.split_ids.items()},
            backbones=sorted({r.backbone for r in self.all_records}),
            categories=sorted({str(r.category) for r in self.all_records if r.category is not None}),
        )

    # -- loaders (ade_train.loaders.SplitLoaders) ---------------------------------------------------

    def _split_dataset(self, split: str) -> TensorDataset:
        t = self.tensors(split)
        return TensorDataset(*(t[k] for k in TENSOR_KEYS))

    def _has_split(self, split: str) -> bool:
        return bool(self.split_ids[split])
