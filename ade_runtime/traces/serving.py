"""Log every served request as an edit trace (format v1), so production traffic becomes data.

A request's record is all or nothing: ``claim_request`` checks a draft of it (ids, strings,
sizes: ``SERVE_LIMITS``) and claims its id in the dataset before any work, ``log_request``
writes the record and its images in one ``TraceWriter.write`` (nothing on disk when refused),
and a request that ends without a record gives its claim back.

The record holds every attempt the loop ran (prompt, output image, NFE and seconds, the
online scores and the critique probability), with ``judge`` left empty for ``ade-judge``
to fill, and ADE's own account under ``meta.ade``: budget, reasoning tokens, decisions,
the chosen attempt, what the controller's work cost and any failure with its fallback.
Attempts that failed in the backbone produced nothing and are listed in
``meta.ade.failures`` rather than as attempts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from ade_runtime import __version__
from ade_runtime.attempts import AttemptLog
from ade_runtime.backbones.base import EditRequest
from ade_runtime.loop import EditResult
from ade_runtime.traces.prepare import RecordLimits
from ade_runtime.traces.records import FORMAT, Attempt, Cost, EditRecord
from ade_runtime.traces.writer import TraceWriter

#: What a served request's record may hold (the HTTP layer's own limits are at most these).
SERVE_LIMITS = RecordLimits(
    max_record_bytes=8 << 20,
    max_id_chars=256,
    max_instruction_chars=10_000,
    max_category_chars=256,
    max_backbone_chars=256,
)

_SAFE_DIR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def request_id(request: EditRequest) -> str:
    """The request's id, or a content hash of image + instruction when it has none."""
    if request.id and request.id != "request":
        return request.id
    h = hashlib.blake2b(digest_size=8)
    h.update(request.instruction.encode("utf-8"))
    h.update(request.image.tobytes())
    return f"req-{h.hexdigest()}"


def image_dir(rid: str) -> str:
    """The folder of a record's images: ``images/<id>`` when the id is a plain file name, else a
    name made of its safe characters and a hash (ids from files may hold '/', '..' or be long)."""
    if _SAFE_DIR.fullmatch(rid) and rid not in (".", ".."):
        return f"images/{rid}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rid)[:40].strip("._-") or "id"
    digest = hashlib.sha256(rid.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"images/{stem}-{digest}"


def staged_record(
    request: EditRequest,
    attempts: list[AttemptLog],
    backbone: str,
    *,
    ade_meta: dict[str, Any] | None = None,
) -> tuple[EditRecord, dict[str, Any]]:
    """The v1 record of one request's attempts and ``{relative path: image}`` of the images it
    names, for ``TraceWriter.write(record, images=...)``; nothing is written."""
    rid = request_id(request)
    folder = image_dir(rid)
    source_rel = f"{folder}/source.png"
    images: dict[str, Any] = {source_rel: request.image}
    logged: list[Attempt] = []
    for entry in attempts:
        out = entry.output
        if out is None:
            continue
        c, r, t = entry.step.key
        image_rel = None
        if out.image is not None:
            image_rel = f"{folder}/c{c}_r{r}_t{t}.png"
            images[image_rel] = out.image
        scores = {k: float(v) for k, v in entry.scores.items() if math.isfinite(v)}
        if entry.critique_p is not None and math.isfinite(entry.critique_p):
            scores["critique"] = float(entry.critique_p)
        if entry.confidence is not None and math.isfinite(entry.confidence):
            scores["confidence"] = float(entry.confidence)
        extra: dict[str, Any] = {"pruned": True} if out.pruned else {}
        logged.append(
            Attempt(
                candidate=c,
                round=r,
                reasoning_tokens=t,
                prompt=entry.prompt,
                cost=Cost(nfe=int(out.nfe), latency_s=max(0.0, float(out.latency_s))),
                image=image_rel,
                scores=scores,
                judge=None,
                extra=extra,
            )
        )
    meta = dict(request.meta)
    if ade_meta is not None:
        meta["ade"] = {"version": __version__, **ade_meta}
    record = EditRecord(
        id=rid,
        instruction=request.instruction,
        source_image=source_rel,
        backbone=backbone,
        attempts=logged,
        category=request.category,
        meta=meta,
    )
    return record, images


def build_record(
    request: EditRequest,
    attempts: list[AttemptLog],
    backbone: str,
    *,
    ade_meta: dict[str, Any] | None = None,
    writer: TraceWriter | None = None,
) -> EditRecord:
    """The v1 record of one request's attempts. With ``writer`` its images are written at once
    (``write_image``, replacing files); ``staged_record`` + ``writer.write(record, images=...)``
    is the all-or-nothing way."""
    record, images = staged_record(request, attempts, backbone, ade_meta=ade_meta)
    if writer is not None:
        for rel, image in images.items():
            writer.write_image(rel, image)
    return record


def claim_request(writer: TraceWriter, request: EditRequest, backbone: str = "pending") -> str:
    """Before any work: check a draft of the request's record (``RecordRefused``, HTTP 422) and
    claim its id in the dataset (``DuplicateRecordId``, HTTP 409: used by a record written by any
    process, before a restart too, or being served right now). Returns the id."""
    rid = request_id(request)
    draft = {
        "format": FORMAT,
        "id": rid,
        "instruction": request.instruction,
        "source_image": f"{image_dir(rid)}/source.png",
        "backbone": backbone,
        "category": request.category,
        "meta": dict(request.meta),
        "attempts": [
            {
                "candidate": 0,
                "round": 0,
                "reasoning_tokens": 0,
                "prompt": request.instruction,
                "image": None,
                "cost": {"nfe": 0},
                "scores": {},
                "judge": None,
            }
        ],
    }
    writer.check(draft, images={draft["source_image"]: request.image})
    writer.claim(rid)
    return rid


def result_meta(result: EditResult) -> dict[str, Any]:
    """ADE's account of one served request, stored under ``meta.ade``."""
    return {
        "budget": result.budget,
        "reasoning_tokens": result.reasoning_tokens,
        "chosen": list(result.chosen) if result.chosen is not None else None,
        "confidence": result.confidence,
        "stop_reason": result.stop_reason,
        **({"card": result.card} if getattr(result, "card", None) else {}),  # the budget's source and why
        **(
            {"claim": result.claim} if getattr(result, "claim", None) else {}
        ),  # what the policy is certified to
        "decisions": result.decisions,
        "nfe": result.nfe,
        "backbone_seconds": round(result.backbone_seconds, 6),
        "overhead_seconds": round(result.overhead_seconds, 6),
        "failures": [{k: v for k, v in f.items() if k != "trace"} for f in result.failures],
        **(
            {
                "verifier": result.verifier,
                "verifier_calls": result.verifier_calls,
                "verifier_seconds": round(result.verifier_seconds, 6),
            }
            if result.verifier is not None
            else {}
        ),
    }


FAILED_LOG = "failed-requests.log"  # not a *.jsonl shard: readers of the dataset skip it


def log_request(
    writer: TraceWriter,
    request: EditRequest,
    result: EditResult,
    backbone: str,
    *,
    ade_extra: dict[str, Any] | None = None,
) -> EditRecord | None:
    """Write one request's record with its images, all or nothing (``ade_extra`` is merged into
    ``meta.ade``, e.g. the export that served it). Raises ``RecordRefused`` with nothing written.
    A request whose every attempt failed has no attempt to log (v1 requires one), so it goes to
    ``failed-requests.log`` beside the shards instead of being lost and its id's claim is
    released; None is returned then."""
    ade_meta = {**result_meta(result), **(ade_extra or {})}
    record, images = staged_record(request, result.attempts, backbone, ade_meta=ade_meta)
    result.record = record
    if record.attempts:
        writer.write(record, images=images)
        return record
    writer.release(record.id)
    source = _failed_image(writer, record.id, request.image)
    _append_failed(writer, record.id, record.instruction, source, backbone, record.meta)
    return None


def log_error(
    writer: TraceWriter, request: EditRequest, error: str, backbone: str, ade_extra: dict[str, Any]
) -> None:
    """Record a request that failed with an internal error (no attempt to log) in
    ``failed-requests.log``, and release its id's claim (the client may retry it)."""
    rid = request_id(request)
    writer.release(rid)
    source_rel = _failed_image(writer, rid, request.image)
    meta = {**request.meta, "ade": {"version": __version__, "error": error, **ade_extra}}
    _append_failed(writer, rid, request.instruction, source_rel, backbone, meta)


def _failed_image(writer: TraceWriter, rid: str, image: Any) -> str:
    """The source image of a failed request, under ``failed/`` with a unique name (never a
    record's image: the id may be retried and get a record of its own)."""
    name = image_dir(rid).removeprefix("images/")
    return writer.write_image(f"failed/{name}-{time.time_ns()}.png", image)


def _append_failed(
    writer: TraceWriter, rid: str, instruction: str, source: str, backbone: str, meta: dict
) -> None:
    line = json.dumps(
        {"id": rid, "instruction": instruction, "source_image": source, "backbone": backbone, "meta": meta},
        sort_keys=True,
        default=str,
    )
    path = Path(writer.root) / FAILED_LOG
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
