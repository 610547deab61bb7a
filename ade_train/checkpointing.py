"""Crash-safe Lightning checkpoints: atomic writes, and reading a checkpoint's epoch without unpickling code.

Lightning's ``TorchCheckpointIO`` writes ``last.ckpt`` in place, so a job killed (SIGKILL, OOM, node
loss) while saving leaves a truncated file that the next resume cannot read. ``AtomicCheckpointIO``
writes to a temp file in the same directory, fsyncs and ``os.replace``s it (after
``lightning/fabric/plugins/io/torch_io.py``). ``checkpoint_epoch`` reads a checkpoint we wrote with
``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ade_runtime.artifacts import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic (temp file + fsync + os.replace)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """The ``epoch`` stored in a Lightning checkpoint written by this package (weights_only load)."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    return int(ckpt.get("epoch", 0))
