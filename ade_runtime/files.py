"""Atomic file writes and content fingerprints, shared by artifacts, traces, caches and reports.

``atomic_write_bytes`` writes through a unique temp file + fsync + ``os.replace``; ``atomic_export_dir``
swaps a whole directory in with two renames, so readers see the old or the new one, never half.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ade_runtime.errors import ArtifactError


def _tmp_sibling(path: Path) -> Path:
    # pid + uuid: two processes (or threads) writing the same target never share a temp file.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a unique temp file + fsync + os.replace (readers never see half)."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


@contextlib.contextmanager
def atomic_export_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a whole export into a sibling temp dir, then swap it in; on error the old export stays.

    Usage: ``with atomic_export_dir(out) as tmp: save_artifact(tmp, ...)``. The swap is two renames
    (old -> backup, new -> final) then removal of the backup, so a reader sees the complete old or
    the complete new directory (at worst, for an instant, none), never a half-written one.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:12]}"
    tmp = final.with_name(f".{final.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = final.with_name(f".{final.name}.old-{tag}")
    had_old = final.exists()
    if had_old:
        os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        if had_old:
            os.replace(backup, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if had_old:
        shutil.rmtree(backup, ignore_errors=True)


def read_json_file(path: str | os.PathLike, fix: str, error: type[Exception] = ValueError) -> Any:
    """The JSON in ``path``, or None when there is no such file; an unreadable file raises ``error``
    naming the file and ``fix`` (what the user should do about it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable ({exc}); {fix}") from None


def fingerprint_files(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the (base name, content) of the files, order-independent: a data fingerprint."""
    items = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ArtifactError(f"{p}: cannot fingerprint, not a file; pass existing data files")
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
        items.append(f"{p.name}\t{digest.hexdigest()}")
    return "sha256:" + hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def fingerprint_records(ids: Iterable[str]) -> str:
    """sha256 over the sorted record ids: identifies which records a predictor was trained on."""
    text = "\n".join(sorted(str(i) for i in ids))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
