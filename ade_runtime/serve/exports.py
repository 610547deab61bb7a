"""The export a worker serves, its fingerprint, and hot swap between requests.

An export directory is replaced atomically (``ade_runtime.artifacts.atomic_export_dir``). Its
fingerprint is a sha256 over the artifact headers (each header carries its weights' sha256), so
a re-export with other weights changes it. ``ExportWatcher.check()`` runs between requests:
when the fingerprint changed it loads the new export strictly and switches only if that
succeeds; a corrupt export is refused (remembered, so it is not reloaded on every request) and
the old one keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ade_runtime.artifacts import CALIBRATION_NAME, CARD_NAME, CRITIQUE_NAME
from ade_runtime.errors import ADEError
from ade_runtime.predictors.bundle import Predictors, resolve_export_dir

log = logging.getLogger(__name__)

HEADERS = (CARD_NAME, CRITIQUE_NAME, CALIBRATION_NAME, "export")


def export_fingerprint(directory: str | Path) -> str | None:
    """sha256 over the export's JSON headers; None when the directory has none (e.g. mid-swap)."""
    d = Path(directory)
    items = []
    for name in HEADERS:
        try:
            data = (d / f"{name}.json").read_bytes()
        except OSError:
            continue
        items.append(f"{name}\t{hashlib.sha256(data).hexdigest()}")
    if not items:
        return None
    return "sha256:" + hashlib.sha256("\n".join(items).encode()).hexdigest()


def _stamp(directory: Path) -> tuple | None:
    """A cheap change detector: (name, inode, size, mtime) of the export's files."""
    out = []
    for name in HEADERS:
        for ext in (".json", ".safetensors"):
            try:
                st = (directory / f"{name}{ext}").stat()
            except OSError:
                continue
            out.append((name + ext, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out) or None


def load_strict(directory: str | Path, device: str = "cpu", allow_fallback: bool = False) -> Predictors:
    """A corrupt predictor always raises; a missing one only without ``allow_fallback``."""
    return Predictors.load(directory, strict=not allow_fallback, device=device)


@dataclass
class ExportWatcher:
    """The predictors a worker serves and the fingerprint of the export they came from."""

    directory: Path
    loader: Callable[[Path], Predictors] = load_strict
    predictors: Predictors | None = None
    fingerprint: str | None = None
    refused: dict[tuple, str] = field(default_factory=dict)
    _stamp: tuple | None = None

    def __post_init__(self) -> None:
        self.directory = resolve_export_dir(self.directory)[0]  # a training OUT dir -> OUT/export

    def load(self) -> Predictors:
        """Initial strict load (raises ArtifactError on a corrupt export)."""
        stamp = _stamp(self.directory)
        self.predictors = self.loader(self.directory)
        self.fingerprint = export_fingerprint(self.directory)
        self._stamp = stamp
        return self.predictors

    def check(self) -> tuple[str, str | None, str | None] | None:
        """Swap in a changed export; returns ("swapped"|"refused", fingerprint, error) or None."""
        stamp = _stamp(self.directory)
        if stamp is None or stamp == self._stamp or stamp in self.refused:
            return None
        fp = export_fingerprint(self.directory)
        try:
            new = self.loader(self.directory)
        except (ADEError, OSError, ValueError) as exc:
            self.refused[stamp] = str(exc)
            log.error("new export in %s refused, still serving %s: %s", self.directory, self.fingerprint, exc)
            return ("refused", fp, str(exc))
        if _stamp(self.directory) != stamp:
            return None  # replaced again while loading: the next check loads the newest
        self._stamp = stamp
        if fp == self.fingerprint:
            return None  # the same export rewritten
        old, self.predictors, self.fingerprint = self.fingerprint, new, fp
        log.warning("swapped export %s -> %s (%s)", old, fp, self.directory)
        return ("swapped", fp, None)
