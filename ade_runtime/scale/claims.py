"""Exactly-once writing of request records by workers that may die at any point.

The output dataset is the source of truth; this module adds, under ``OUT/.ade-claims/``, the two
small files per request id that make "write this request's record" happen once however often a
worker dies or a job is rerun:

- a **claim** ``<key>.<gen>.claim``, created with ``O_CREAT | O_EXCL`` before the record is written.
  It names the claimer's shard prefix (each worker process writes its own shards, ``<prefix>-*.jsonl``);
- a **done** marker ``<key>.done``, created after the record line is on disk (written and fsynced).

``ClaimBook.claim(id)`` returns a ``Claim`` to write under, or None when the record must not be
written (already written, or another live worker holds it):

1. ``<key>.done`` exists: written, skip.
2. No claim: create generation 0 (``O_EXCL``: of two racing workers exactly one wins).
3. Claims exist but no done marker: their writers died (a retry runs only after the worker it
   replaces died, and two jobs never share an output: the driver holds a lock). The dead writers'
   shards are read: a complete line with this id means the record was written and only the marker
   was missing, so the marker is written and the request skipped (no duplicate). Otherwise the
   line is absent or cut (the reader reports a cut line as ``truncated_line``) and the request is
   taken over by creating generation ``g + 1``, again with ``O_EXCL``.

``<key>`` is a hash of the id, so any id is a safe file name. This claim protocol lives here, not in
``TraceWriter``; the writer's own duplicate check is per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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


class ClaimBook:
    """The claims of one output dataset, used by one writer whose shards are ``<prefix>-*.jsonl``,
    in one job (``job``: a token of the driver's run, so that deaths are counted per run)."""

    def __init__(self, root: str | os.PathLike, prefix: str, job: str = "") -> None:
        self.root = Path(root)
        self.dir = self.root / CLAIMS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.job = job

    def is_done(self, record_id: str) -> bool:
        return (self.dir / f"{claim_key(record_id)}.done").exists()

    def claim(self, record_id: str) -> Claim | None:
        """A claim to write ``record_id`` under, or None when it is written or held by another writer."""
        key = claim_key(record_id)
        if (self.dir / f"{key}.done").exists():
            return None
        earlier = {g: self._read(key, g) for g in self._claims(key)}
        if earlier:
            prefixes = {c.get("prefix", "") for c in earlier.values()}
            if any(_has_record(self.root, p, record_id) for p in prefixes if p):
                self._mark_done(key, record_id, "recovered")
                return None
        generation = max(earlier) + 1 if earlier else 0
        body = json.dumps({"id": record_id, "prefix": self.prefix, "job": self.job, "pid": os.getpid()})
        if not create_exclusive(self.dir / f"{key}.{generation}.claim", body):
            return None  # another writer claimed it a moment ago
        tries = sum(1 for c in earlier.values() if c.get("job") == self.job)
        return Claim(record_id, key, generation, self.prefix, tries)

    def finish(self, claim: Claim) -> None:
        """The record of ``claim`` is on disk: mark it done (a retry will skip it)."""
        self._mark_done(claim.key, claim.record_id, self.prefix)

    def _claims(self, key: str) -> list[int]:
        return [int(m.group(2)) for p in self.dir.glob(f"{key}.*.claim") if (m := _CLAIM.fullmatch(p.name))]

    def _read(self, key: str, generation: int) -> dict:
        try:
            return json.loads((self.dir / f"{key}.{generation}.claim").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a claim file cut by a crash names no writer: nothing of it to find

    def _mark_done(self, key: str, record_id: str, by: str) -> None:
        create_exclusive(self.dir / f"{key}.done", json.dumps({"id": record_id, "by": by}))


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
