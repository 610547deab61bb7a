"""Exactly-once writing of request records by workers that may die at any point.

The output dataset is the source of truth; this module adds, under ``OUT/.ade-claims/``, the two
small files per request id that make "write this request's record" happen once however often a
worker dies or a job is rerun:

- a **claim** ``<key>.<gen>.claim``, created atomically (written under a temporary name, then
  ``link``-ed into place, which fails when the name exists) before the record is written, and
  ``flock``-ed by its writer until the record is written: the kernel drops the lock when the writer
  dies, so a held lock means a live writer. It names the claimer's shard prefix (each worker process
  writes its own shards, ``<prefix>-*.jsonl``);
- a **done** marker ``<key>.done``, created after the record line is on disk (written and fsynced).

``ClaimBook.claim(id)`` returns a ``Claim`` to write under, or None when the record must not be
written (already written, or another live worker holds it):

1. ``<key>.done`` exists: written, skip.
2. A claim whose lock is held: a live writer has it, skip (a retry runs only after the worker it
   replaces died and two jobs never share an output, so this is a race, not the usual path).
3. No claim: create generation 0 (of two racing workers exactly one wins).
4. Claims exist, none held, no done marker: their writers died. The dead writers' shards are
   read: a complete line with this id means the record was written and only the marker was
   missing, so the marker is written and the request skipped (no duplicate). Otherwise the line
   is absent or cut (the reader reports a cut line as ``truncated_line``) and the request is taken
   over by creating generation ``g + 1``, again atomically (of two racing retries one wins).

``<key>`` is a hash of the id, so any id is a safe file name. This claim protocol lives here, not in
``TraceWriter``; the writer's own duplicate check is per process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

CLAIMS_DIR = ".ade-claims"
_CLAIM = re.compile(r"([0-9a-f]{32})\.(\d+)\.claim")


def claim_key(record_id: str) -> str:
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Claim:
    record_id: str
    key: str
    generation: int
    prefix: str
    tries: int = 0  # earlier claims of this job: workers that died on this request in this job
    fd: int = -1  # the open claim file, flock-ed while its writer lives


class ClaimBook:
    """The claims of one output dataset, used by one writer whose shards are ``<prefix>-*.jsonl``,
    in one job (``job``: a token of the driver's run, so that deaths are counted per run)."""

    def __init__(self, root: str | os.PathLike, prefix: str, job: str = "") -> None:
        self.root = Path(root)
        self.dir = self.root / CLAIMS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.job = job
        self._locked: set[int] = set()  # descriptors of the claims this book holds

    def is_done(self, record_id: str) -> bool:
        return (self.dir / f"{claim_key(record_id)}.done").exists()

    def claim(self, record_id: str) -> Claim | None:
        """A claim to write ``record_id`` under, or None when it is written or held by another writer.
        The claim's lock is held until ``finish`` or ``release`` (or this process's death)."""
        key = claim_key(record_id)
        if (self.dir / f"{key}.done").exists():
            return None
        earlier: dict[int, dict] = {}
        for g in self._claims(key):
            if _held(self.dir / f"{key}.{g}.claim"):
                return None  # its writer is alive (a retry never runs beside it; a race does)
            earlier[g] = self._read(key, g)
        if earlier:
            prefixes = {c.get("prefix", "") for c in earlier.values()}
            found = [p for p in prefixes if p and _has_record(self.root, p, record_id)]
            if found:
                self._mark_done(key, record_id, found[0])
                return None
        generation = max(earlier) + 1 if earlier else 0
        body = json.dumps({"id": record_id, "prefix": self.prefix, "job": self.job, "pid": os.getpid()})
        fd = _create_locked(self.dir / f"{key}.{generation}.claim", body)
        if fd is None:
            return None  # another writer claimed it a moment ago
        tries = sum(1 for c in earlier.values() if c.get("job") == self.job)
        self._locked.add(fd)
        return Claim(record_id, key, generation, self.prefix, tries, fd)

    def finish(self, claim: Claim) -> None:
        """The record of ``claim`` is on disk: mark it done (a retry will skip it)."""
        self._mark_done(claim.key, claim.record_id, self.prefix)

    def release(self, claim: Claim) -> None:
        """Drop the claim's lock (after ``finish``, or without a record when the request failed: then
        a later job takes it over). Idempotent."""
        if claim.fd in self._locked:
            self._locked.discard(claim.fd)
            os.close(claim.fd)

    def _claims(self, key: str) -> list[int]:
        return [int(m.group(2)) for p in self.dir.glob(f"{key}.*.claim") if (m := _CLAIM.fullmatch(p.name))]

    def _read(self, key: str, generation: int) -> dict:
        try:
            return json.loads((self.dir / f"{key}.{generation}.claim").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a claim file cut by a crash names no writer: nothing of it to find

    def _mark_done(self, key: str, record_id: str, by: str) -> None:
        create_exclusive(self.dir / f"{key}.done", json.dumps({"id": record_id, "by": by}))


def forget_done(root: str | os.PathLike, record_ids: list[str]) -> int:
    """Remove the done markers of ``record_ids``: the driver calls it for the requests it hands out,
    whose records are not in the dataset (deleted since), so no worker skips them. Returns how many."""
    d = Path(root) / CLAIMS_DIR
    if not d.is_dir():
        return 0
    wanted = {f"{claim_key(r)}.done" for r in record_ids}
    removed = 0
    for name in os.listdir(d):
        if name in wanted:
            os.unlink(d / name)
            removed += 1
    return removed


def _held(path: Path) -> bool:
    """Whether a live process holds the claim's lock (the kernel drops it when the holder dies)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def _create_locked(path: Path, body: str) -> int | None:
    """Create ``path`` with ``body``, already locked, iff it does not exist; the open descriptor.

    The file is written and locked under a temporary name and linked into place: ``link`` fails when
    the name exists (atomic, on NFS too), and no one ever sees the claim unlocked while its writer lives.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, body.encode("utf-8"))
        os.fsync(fd)
        os.link(tmp, path)
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)
    return fd


def create_exclusive(path: Path, body: str) -> bool:
    """Create ``path`` with ``body`` iff it does not exist (atomic on local and NFSv3+ filesystems)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, body.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _has_record(root: Path, prefix: str, record_id: str) -> bool:
    """Whether a shard of ``prefix`` holds a complete record line with ``record_id``."""
    pattern = re.compile(re.escape(prefix) + r"-\d{5,}\.jsonl")
    needle = json.dumps(record_id, ensure_ascii=False).encode("utf-8")
    for shard in root.iterdir():
        if not pattern.fullmatch(shard.name):
            continue
        with open(shard, "rb") as fh:
            for line in fh:
                if needle not in line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a line cut by the crash: not a record
                if isinstance(obj, dict) and obj.get("id") == record_id:
                    return True
    return False
