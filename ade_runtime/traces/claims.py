"""Record ids unique in a trace dataset, across restarts and across processes writing into it.

A ``TraceWriter`` claims every id on disk before it writes anything for it: it creates
``<root>/.ade-ids/<sha256 of the id>`` with ``O_CREAT | O_EXCL``, which the kernel lets exactly
one process win, so two writers (two ``ade-serve`` workers, two ``ade-collect`` shards) racing on
one id cannot both succeed. The claim file stays after the record is written: it is how a writer
opened earlier learns about ids written since. Ids of records that have no claim (written by other
tools or before claims existed) are read from the shards once, when a writer opens the dataset.

Crash consistency. Each open writer holds an ``flock`` on ``.ade-ids/writers/<token>.lock`` for its
lifetime (the kernel drops it when the process dies) and names that token in its claims. A claim
is *stale* when its owner is gone and no shard holds its id (the writer died between claim and
record, or a shard was deleted). Stale claims are released when a writer opens the dataset, and
on demand when a write needs an id whose claim is stale; a claim of a live writer is never taken.
Claim files need no fsync: after a power loss a claim without a record is stale, and a record
without a claim is found by the shard scan.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError, TraceError
from .images import file_sha256, safe_join
from .reader import DEFAULT_MAX_LINE_BYTES, _lines, _open, find_shards

CLAIMS_DIR = ".ade-ids"
_UNKNOWN_OWNER_GRACE_S = 2.0  # a claim of an owner with no lock file is stale only when older

log = logging.getLogger(__name__)


class RecordRefused(InputError):
    """The writer refused a record before writing anything (no line, no image, no claim left).

    ``reason`` is a stable code (a reader reject reason such as ``invalid_unicode``, or one of the
    writer's own: ``too_long``, ``record_too_large``, ``image_exists``, ``image_not_named``,
    ``bad_image``, ``duplicate_id``) and ``field`` the path of the field at fault. A server maps it
    to HTTP 422.
    """

    def __init__(self, message: str, reason: str, field: str | None):
        super().__init__(message)
        self.reason = reason
        self.field = field


class DuplicateRecordId(RecordRefused):
    """The id is already used in the dataset (a record, or a claim of a running writer): HTTP 409."""

    def __init__(self, message: str):
        super().__init__(f"{message} [duplicate_id]", "duplicate_id", "id")


def id_key(rid: str) -> str:
    """The claim file name of an id (any string, even one that is not valid Unicode)."""
    return hashlib.sha256(rid.encode("utf-8", "surrogatepass")).hexdigest()


def scan_ids(root: Path, paths: set[str] | None = None) -> set[str]:
    """Ids of the records in ``root``'s shards (parsed lines with a string id; not a validation).

    With ``paths`` (a set), the image paths the records name are added to it, relative to ``root``.
    """
    ids: set[str] = set()
    try:
        shards = find_shards(root)
    except TraceError:
        return ids
    for shard in shards:
        base = os.path.relpath(shard.parent, root)
        try:
            with _open(shard) as f:
                for _, raw, _ in _lines(f, DEFAULT_MAX_LINE_BYTES):
                    try:
                        obj = json.loads(raw) if raw else None
                    except (ValueError, RecursionError):
                        continue
                    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                        ids.add(obj["id"])
                        if paths is not None:
                            paths.update(os.path.normpath(os.path.join(base, p)) for p in _named(obj))
        except (OSError, EOFError):
            continue  # an unreadable shard is the reader's to report, not the writer's
    return ids


def _named(obj: dict) -> list[str]:
    out = [obj.get("source_image")]
    attempts = obj.get("attempts")
    if isinstance(attempts, list):
        out += [a.get("image") for a in attempts if isinstance(a, dict)]
    return [p for p in out if isinstance(p, str)]


class IdRegistry:
    """The ids a writer may not reuse. ``shared=False``: in memory only (a private, fresh directory)."""

    def __init__(self, root: Path, shared: bool = True):
        self.root = root
        self.known: set[str] = set()  # ids with a record: in the shards at open, or written by us
        self.pending: set[str] = set()  # claimed by us, record not written yet
        self.stale_released = 0
        self.dir: Path | None = None
        self._lock_fd: int | None = None
        if not shared:
            return
        self.dir = root / CLAIMS_DIR
        writers = self.dir / "writers"
        try:
            writers.mkdir(parents=True, exist_ok=True)
            self.token = uuid.uuid4().hex
            self._lock_path = writers / f"{self.token}.lock"
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise TraceError(f"cannot set up id claims in {self.dir}: {exc}") from exc
        self._recover()

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, rid: str) -> None:
        """Reserve ``rid`` for this writer; DuplicateRecordId when a record or another claim has it."""
        if rid in self.known:
            raise DuplicateRecordId(f"id {rid!r} is already used by a record of {self.root}; use a new id")
        if rid in self.pending:
            raise DuplicateRecordId(f"id {rid!r} is being written by this writer already; use a new id")
        if self.dir is None:
            self.pending.add(rid)
            return
        try:
            self._create(rid)
        except FileNotFoundError as exc:  # the claims folder was removed under a running writer
            raise TraceError(f"cannot claim id {rid!r} in {self.dir}: {exc}; reopen the writer") from exc
        except FileExistsError:
            owner = self._read_claim(self.dir / id_key(rid))
            if not self._alive(owner.get("owner")) and self._recover_one(rid):
                try:
                    self._create(rid)
                except FileExistsError:  # another writer recovered it and claimed it first
                    raise DuplicateRecordId(self._taken(rid, owner)) from None
            else:
                raise DuplicateRecordId(self._taken(rid, owner)) from None
        except OSError as exc:
            raise TraceError(f"cannot claim id {rid!r} in {self.dir}: {exc}") from exc
        self.pending.add(rid)

    def note_images(self, rid: str, planned: dict[str, str]) -> None:
        """Record in our claim on ``rid`` the images about to be created (``{rel: sha256}``), so that
        if this process dies before the record is written, recovery removes them with the claim."""
        if self.dir is None or rid not in self.pending or not planned:
            return
        path = self.dir / id_key(rid)
        info = {**self._read_claim(path), "images": planned}
        tmp = path.with_name(f".{path.name}.{self.token}.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(json.dumps(info))
        os.replace(tmp, path)  # atomic: the claim never disappears, readers see old or new content

    def commit(self, rid: str) -> None:
        """The record of ``rid`` is written: the claim stays for good."""
        self.pending.discard(rid)
        self.known.add(rid)

    def release(self, rid: str) -> None:
        """Drop this writer's claim on ``rid`` (no record was written); other claims are untouched."""
        if rid not in self.pending:
            return
        self.pending.discard(rid)
        if self.dir is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / id_key(rid))

    def close(self) -> None:
        for rid in list(self.pending):
            self.release(rid)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def _create(self, rid: str) -> None:
        assert self.dir is not None
        fd = os.open(self.dir / id_key(rid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        info = {"id": rid, "owner": self.token, "pid": os.getpid(), "host": socket.gethostname()}
        with os.fdopen(fd, "w", encoding="ascii") as f:  # not os.write: one buffered write, no fsync
            f.write(json.dumps({**info, "time": time.time()}))

    def _taken(self, rid: str, claim: dict) -> str:
        if rid in self.known:
            return f"id {rid!r} is already used by a record of {self.root}; use a new id"
        who = f"pid {claim.get('pid', '?')} on {claim.get('host', '?')}"
        if self._alive(claim.get("owner")):
            return f"id {rid!r} is being written by another trace writer ({who}); use a new id"
        return f"id {rid!r} was claimed in {self.dir} by another trace writer ({who}); use a new id"

    # -- owners and stale claims ------------------------------------------------------------------

    @staticmethod
    def _read_claim(path: Path) -> dict:
        try:
            obj = json.loads(path.read_text(encoding="ascii"))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}  # being written right now, or damaged: the owner is unknown
        return obj if isinstance(obj, dict) else {}

    def _alive(self, token: object) -> bool:
        """Whether the writer ``token`` still runs (holds its lock); unknown owners count as alive."""
        assert self.dir is not None
        if not isinstance(token, str) or not token.isalnum():
            return True
        if token == self.token:
            return True
        try:
            fd = os.open(self.dir / "writers" / f"{token}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False  # closed (its lock file is removed after its last record) or recovered
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _recovery_lock(self) -> Iterator[None]:
        """One recovery at a time per dataset (scans and deletions of stale claims)."""
        assert self.dir is not None
        fd = os.open(self.dir / "recover.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _recover(self) -> None:
        """On open: read the shards' ids and release the claims of dead writers that have no record."""
        assert self.dir is not None
        with self._recovery_lock():
            t0 = time.time()
            dead, held = self._dead_writers()  # before the scan: a writer dead now adds no record later
            named: dict[str, set[str]] = {}  # filled on first need: paths the records name
            try:
                self.known = scan_ids(self.root)
                keys = {id_key(rid) for rid in self.known}
                for entry in os.scandir(self.dir):
                    if len(entry.name) != 64 or entry.name in keys or not entry.is_file():
                        continue
                    claim = self._read_claim(Path(entry.path))
                    owner = claim.get("owner")
                    gone = owner in dead or (
                        owner not in held and entry.stat().st_mtime < t0 - _UNKNOWN_OWNER_GRACE_S
                    )
                    if gone:
                        self._drop_orphans(claim, named)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                        self.stale_released += 1
            finally:
                for token, fd in dead.items():
                    with contextlib.suppress(OSError):
                        os.unlink(self.dir / "writers" / f"{token}.lock")
                    os.close(fd)
        if self.stale_released:
            log.warning(
                "%s: released %d stale id claim(s) of writers that stopped before writing their record",
                self.root,
                self.stale_released,
            )

    def _dead_writers(self) -> tuple[dict[str, int], set[str]]:
        """({token: fd holding its lock} of stopped writers, tokens of running ones)."""
        assert self.dir is not None
        dead: dict[str, int] = {}
        held: set[str] = set()
        for entry in os.scandir(self.dir / "writers"):
            token = entry.name.removesuffix(".lock")
            if token == entry.name or token == self.token:
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                dead[token] = fd
            except BlockingIOError:
                held.add(token)
                os.close(fd)
        return dead, held

    def _recover_one(self, rid: str) -> bool:
        """Release the claim on ``rid`` when its owner is gone and no shard holds it (rescans the shards)."""
        assert self.dir is not None
        path = self.dir / id_key(rid)
        with self._recovery_lock():
            if not path.exists():
                return True  # released meanwhile: claim it again
            claim = self._read_claim(path)
            if not claim or self._alive(claim.get("owner")):
                return False
            paths: set[str] = set()
            if rid in scan_ids(self.root, paths):
                self.known.add(rid)
                return False
            self._drop_orphans(claim, {"paths": paths})
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.stale_released += 1
            log.warning("%s: released the stale claim on id %r (its writer stopped)", self.root, rid)
            return True

    def _drop_orphans(self, claim: dict, named: dict[str, set[str]]) -> None:
        """Remove the images a stale claim's writer created for its never-written record: only files
        still holding the bytes it wrote and named by no record (``named["paths"]``, scanned once)."""
        planned = claim.get("images")
        if not isinstance(planned, dict) or not planned:
            return
        if "paths" not in named:
            named["paths"] = set()
            scan_ids(self.root, named["paths"])
        for rel, digest in planned.items():
            if not isinstance(rel, str) or os.path.normpath(rel) in named["paths"]:
                continue
            try:
                full = safe_join(self.root, rel)
            except ValueError:
                continue
            if file_sha256(full) == digest:
                with contextlib.suppress(OSError):
                    os.unlink(full)
                with contextlib.suppress(OSError):
                    os.rmdir(full.parent)  # the record's folder, when nothing else is in it
