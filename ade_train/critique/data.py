"""Training data of the critique head: (source, attempt, instruction, judge pass, flaw boxes) examples.

Any format-v1 trace dataset works: the examples and their per-patch targets are
``ade_train.critique.examples``. Requests are split by id with the same split as CARD
(``ade_train.splits``), so the critique never sees a calibration or test request.

Inputs are prepared once per image: patch tokens through ``FeatureCache`` for a frozen encoder,
or the encoder's preprocessed pixels when the encoder is trained (``finetune_last_n``,
``scratch_tiny``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image

from ade_runtime.errors import TraceError
from ade_runtime.images import open_rgb
from ade_runtime.policy import budget
from ade_runtime.predictors.critique import patch_pixel_diff
from ade_runtime.predictors.regions import crop_window, to_view
from ade_runtime.traces import TraceDataset
from ade_runtime.traces.records import EditRecord, Flaw
from ade_train.critique.examples import (
    CritiqueExample,
    cap_examples,
    collect_examples,
    flaw_cover,
    learn_kinds,
    patch_targets,
    true_boxes,
)
from ade_train.export import DataInfo, data_source
from ade_train.loaders import SplitLoaders, require_dataset, run_paths
from ade_train.splits import (
    SPLITS,
    dataset_fingerprint,
    display_path,
    load_splits,
    read_splits_file,
    split_ids,
)
from ade_train.summary import report_rejects

log = logging.getLogger(__name__)


class _ExampleTensors(torch.utils.data.Dataset):
    """Examples as index lookups into per-image inputs (sources are shared by many attempts)."""

    def __init__(self, inputs: torch.Tensor, text: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        self.inputs, self.text, self.rows = inputs, text, rows

    def __len__(self) -> int:
        return len(self.rows["passed"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = self.rows
        return {
            "source": self.inputs[r["source"][i]],
            "attempt": self.inputs[r["attempt"][i]],
            "text": self.text[r["text"][i]],
            "passed": r["passed"][i],
            "weight": r["weight"][i],
            "group": r["group"][i],
            "scores": r["scores"][i],
            **({"pixel_diff": r["pixel_diff"][i]} if "pixel_diff" in r else {}),
            "target": r["target"][i],
            "cover": r["cover"][i],
            "boxes": r["boxes"][i],
        }


class CritiqueDataModule(SplitLoaders, L.LightningDataModule):
    """Judged attempts of a trace dataset as critique-head batches, split by request like CARD."""

    def __init__(
        self,
        data: str,
        image_encoder: dict[str, Any],
        text_encoder: dict[str, Any] | None = None,
        encoder_mode: str = "frozen",
        out_dir: str | None = None,
        cache_dir: str | None = None,
        split_fractions: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1),
        seed: int = 0,
        batch_size: int = 32,
        max_train_attempts: int | None = 3000,
        max_eval_attempts: int | None = 800,
        max_train_per_request: int | None = None,
        max_boxes: int = 4,
        num_workers: int = 0,
        score_inputs: Sequence[str] = (),
        pixel_diff: bool = False,
    ) -> None:
        """
        Args:
            data: trace dataset directory (edit-trace v1).
            image_encoder: image encoder spec (build_image_encoder), a DINOv2 by id, path or config.
            text_encoder: instruction encoder spec (default {"kind": "hashing", "dim": 256}).
            encoder_mode: "frozen" caches patch tokens; "finetune_last_n"/"scratch_tiny" keep pixels.
            out_dir: run directory: its splits.json (written by CARD) is reused when it names this data.
            cache_dir: feature cache for frozen patch tokens (default OUT/features).
            split_fractions: train / val / calibration / test shares of the requests (as CARD).
            seed: split seed (as CARD) and the seed of the attempt caps and shuffling.
            batch_size: attempts per batch.
            max_train_attempts: cap on training attempts (seeded sample), None for all.
            max_eval_attempts: cap on val and test attempts each, None for all.
            max_train_per_request: training attempts kept per request (a seeded sample), None for all: the
                training cap then spreads over more requests (evaluation keeps whole requests).
            max_boxes: judge boxes kept per attempt for the IoU metric.
            num_workers: DataLoader workers (inputs are in memory, 0 is usually fastest).
            score_inputs: cheap scores of each attempt the head also reads (e.g. [clip_i, clip_t]).
            pixel_diff: give the head each patch's pooled |attempt - source| pixels too.
        """
        super().__init__()
        self.save_hyperparameters()
        self.data_dir, self.out_dir, self.cache_dir = run_paths(data, out_dir, cache_dir)
        self.image_spec = dict(image_encoder)
        self.text_spec = dict(text_encoder or {"kind": "hashing", "dim": 256})
        self.encoder_mode = encoder_mode
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.seed, self.batch_size, self.num_workers = int(seed), int(batch_size), int(num_workers)
        self.caps = {"train": max_train_attempts, "val": max_eval_attempts, "test": max_eval_attempts}
        self.max_train_per_request = max_train_per_request
        self.max_boxes = int(max_boxes)
        self.score_inputs = tuple(str(k) for k in score_inputs)
        self.pixel_diff = bool(pixel_diff)
        if self.batch_size < 1 or self.max_boxes < 1:
            raise ValueError("data.batch_size and data.max_boxes must be >= 1")
        self._ready = False

    # -- loading ---------------------------------------------------------------------------------

    def _splits(self, records: list[EditRecord]) -> dict[str, list[str]]:
        """CARD's split: OUT/splits.json when CARD wrote it with this seed (refused when it belongs to
        another dataset), else the same function."""
        judged = [r for r in records if budget.is_judged(r)]
        saved = read_splits_file(self.out_dir) if self.out_dir else None
        if saved is not None and saved.get("seed") == self.seed:
            return load_splits(self.out_dir, dataset_fingerprint(judged))
        return split_ids(judged, self.split_fractions, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        from ade_runtime.encoders import build_image_encoder, build_text_encoder

        require_dataset(self.data_dir)
        ds = TraceDataset(self.data_dir, images="header")
        records = list(ds)
        self.rejects = list(ds.rejects)
        report_rejects("critique", self.data_dir, self.rejects)
        self.split_ids = self._splits(records)
        by_id = {r.id: r for r in records}
        self.image_encoder = build_image_encoder(self.image_spec)
        self.text_encoder = build_text_encoder(self.text_spec)
        self.grid = tuple(self.image_encoder.patch_grid())
        self.examples: dict[str, list[CritiqueExample]] = {}
        self.skipped: Counter = Counter()
        for split in ("train", "val", "test"):
            found = collect_examples(by_id[i] for i in self.split_ids[split] if i in by_id)
            self.skipped.update(found.skipped)
            train = split == "train"
            self.examples[split] = cap_examples(
                found.examples,
                self.caps[split],
                self.seed,
                distinct=train,
                per_request=self.max_train_per_request if train else None,
            )
        if not self.examples["train"]:
            raise TraceError(
                f"{self.data_dir}: no training attempt has both an image and a judge label "
                f"(skipped {dict(self.skipped)}); the critique needs judged attempt images"
            )
        self.kinds = learn_kinds(self.examples["train"])
        self.records_used = [by_id[i] for s in SPLITS for i in self.split_ids[s] if i in by_id]
        self._build_tensors()
        self._ready = True

    def _build_tensors(self) -> None:
        paths = sorted({p for exs in self.examples.values() for ex in exs for p in (ex.source, ex.attempt)})
        slot = {p: i for i, p in enumerate(paths)}
        self.inputs = self._image_inputs(paths)
        texts = sorted({ex.instruction for exs in self.examples.values() for ex in exs})
        text_slot = {t: i for i, t in enumerate(texts)}
        self.text = self.text_encoder.encode(texts).float()
        kind_set = set(self.kinds)
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        diff_cache: dict[tuple[Path, Path], torch.Tensor] = {}
        group_slot = {
            g: i for i, g in enumerate(sorted({ex.record_id for e in self.examples.values() for ex in e}))
        }
        for split, exs in self.examples.items():
            targets, covers, boxes, diffs = [], [], [], []
            for ex in exs:
                with Image.open(ex.attempt) as im:
                    window = crop_window(self.image_encoder, *im.size)
                if self.pixel_diff:
                    if (ex.source, ex.attempt) not in diff_cache:
                        diff_cache[(ex.source, ex.attempt)] = torch.from_numpy(
                            patch_pixel_diff(open_rgb(ex.source), open_rgb(ex.attempt), self.grid, window)
                        )
                    diffs.append(diff_cache[(ex.source, ex.attempt)])
                seen = [
                    Flaw(f.kind, b) for f in ex.flaws if f.kind in kind_set and (b := to_view(f.box, window))
                ]
                targets.append(patch_targets(seen, self.kinds, self.grid))
                covers.append(flaw_cover(seen, self.grid))
                boxes.append(true_boxes(seen, self.max_boxes))
            n = len(exs)
            self.rows[split] = {
                "source": torch.tensor([slot[ex.source] for ex in exs], dtype=torch.long),
                "attempt": torch.tensor([slot[ex.attempt] for ex in exs], dtype=torch.long),
                "text": torch.tensor([text_slot[ex.instruction] for ex in exs], dtype=torch.long),
                "passed": torch.tensor([ex.passed for ex in exs], dtype=torch.float32),
                "weight": torch.tensor([ex.weight for ex in exs], dtype=torch.float32),
                "group": torch.tensor([group_slot[ex.record_id] for ex in exs], dtype=torch.long),
                "scores": torch.tensor(
                    [[dict(ex.scores).get(k, float("nan")) for k in self.score_inputs] for ex in exs],
                    dtype=torch.float32,
                ).reshape(n, len(self.score_inputs)),
                "target": torch.stack(targets)
                if n
                else torch.zeros(0, self.grid[0] * self.grid[1], dtype=torch.long),
                "cover": torch.stack(covers)
                if n
                else torch.zeros(0, self.grid[0] * self.grid[1], dtype=torch.bool),
                "boxes": torch.stack(boxes) if n else torch.zeros(0, self.max_boxes, 4),
            }
            if self.pixel_diff:
                p = self.grid[0] * self.grid[1]
                self.rows[split]["pixel_diff"] = torch.stack(diffs) if n else torch.zeros(0, p, 4)

    def _image_inputs(self, paths: list[Path]) -> torch.Tensor:
        """Patch tokens (frozen encoder, cached) or preprocessed pixels (trained encoder), fp16 in memory."""
        if self.encoder_mode != "frozen":
            chunks = [
                self.image_encoder.preprocess([open_rgb(p) for p in paths[i : i + 256]])
                for i in range(0, len(paths), 256)
            ]
            return torch.cat(chunks).half()
        compute = lambda items: self.image_encoder.encode_patches([open_rgb(p) for p in items])  # noqa: E731
        if self.cache_dir is None:
            return torch.cat([compute(paths[i : i + 64]) for i in range(0, len(paths), 64)]).half()
        from ade_runtime.encoders import FeatureCache, content_key

        keys = [content_key(p.read_bytes()) for p in paths]
        return (
            FeatureCache(self.cache_dir)
            .get(self.image_encoder, paths, keys, compute, variant="patches")
            .half()
        )

    # -- views -----------------------------------------------------------------------------------

    def score_stats(self) -> tuple[list[float], list[float]]:
        """(mean, std) of each score input over the training attempts (weighted), for standardising."""
        rows = self.rows["train"]
        means, stds = [], []
        for j in range(len(self.score_inputs)):
            x, w = rows["scores"][:, j], rows["weight"]
            ok = torch.isfinite(x)
            m, v = 0.0, 1.0
            if ok.any():
                m = float((x[ok] * w[ok]).sum() / w[ok].sum())
                v = float(((x[ok] - m) ** 2 * w[ok]).sum() / w[ok].sum())
            means.append(m)
            stds.append(max(v**0.5, 1e-6))
        return means, stds

    @property
    def token_dim(self) -> int:
        return int(self.image_encoder.patch_dim)

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.dim)

    def data_info(self) -> DataInfo:
        recs = self.records_used
        return DataInfo(
            path=display_path(self.data_dir),
            fingerprint=dataset_fingerprint(recs),
            source=data_source(recs),
            n_records=len(recs),
            n_rejected=len(self.rejects),
            splits={s: len(self.examples.get(s, [])) for s in ("train", "val", "test")},
            backbones=sorted({r.backbone for r in recs}),
            categories=sorted({str(r.category) for r in recs if r.category is not None}),
        )

    # -- loaders (ade_train.loaders.SplitLoaders) ---------------------------------------------------

    def _split_dataset(self, split: str) -> _ExampleTensors:
        if not self._ready:
            raise RuntimeError("CritiqueDataModule.setup() has not run")
        return _ExampleTensors(self.inputs, self.text, self.rows[split])

    def _has_split(self, split: str) -> bool:
        return bool(self.examples[split])

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Batches of whole requests (shuffled each epoch): the within-request ranking loss needs
        a request's passing and failing attempts in one batch."""
        groups = [ex.record_id for ex in self.examples["train"]]
        return torch.utils.data.DataLoader(
            self._split_dataset("train"),
            batch_sampler=RequestBatches(groups, self.batch_size, self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class RequestBatches(torch.utils.data.Sampler):
    """Index batches of about ``batch_size`` made of whole requests, in a new seeded order each epoch."""

    def __init__(self, groups: Sequence[str], batch_size: int, seed: int) -> None:
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        self.members = [members[g] for g in sorted(members)]
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0

    def _batches(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(len(self.members), generator=torch.Generator().manual_seed(self.seed + epoch))
        out, batch = [], []
        for j in order.tolist():
            batch.extend(self.members[j])
            if len(batch) >= self.batch_size:
                out.append(batch)
                batch = []
        return out + ([batch] if batch else [])

    def __iter__(self):
        batches = self._batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches(self.epoch))
