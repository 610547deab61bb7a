"""Log every served request as an edit trace (format v1), so production traffic becomes data.

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
from pathlib import Path
from typing import Any

from ade_runtime import __version__
from ade_runtime.backbones.base import EditRequest
from ade_runtime.loop import AttemptLog, EditResult
from ade_runtime.traces.records import Attempt, Cost, EditRecord
from ade_runtime.traces.writer import TraceWriter


def request_id(request: EditRequest) -> str:
    """The request's id, or a content hash of image + instruction when it has none."""
    if request.id and request.id != "request":
        return request.id
    h = hashlib.blake2b(digest_size=8)
    h.update(request.instruction.encode("utf-8"))
    h.update(request.image.tobytes())
    return f"req-{h.hexdigest()}"


def build_record(
    request: EditRequest,
    attempts: list[AttemptLog],
    backbone: str,
    *,
    ade_meta: dict[str, Any] | None = None,
    writer: TraceWriter | None = None,
) -> EditRecord:
    """The v1 record of one request's attempts; images are written through ``writer`` when given."""
    rid = request_id(request)
    source_rel = f"images/{rid}/source.png"
    if writer is not None:
        source_rel = writer.write_image(source_rel, request.image)
    logged: list[Attempt] = []
    for entry in attempts:
        out = entry.output
        if out is None:
            continue
        c, r, t = entry.step.key
        image_rel = None
        if out.image is not None and writer is not None:
            image_rel = writer.write_image(f"images/{rid}/c{c}_r{r}_t{t}.png", out.image)
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
    return EditRecord(
        id=rid,
        instruction=request.instruction,
        source_image=source_rel,
        backbone=backbone,
        attempts=logged,
        category=request.category,
        meta=meta,
    )


def result_meta(result: EditResult) -> dict[str, Any]:
    """ADE's account of one served request, stored under ``meta.ade``."""
    return {
        "budget": result.budget,
        "reasoning_tokens": result.reasoning_tokens,
        "chosen": list(result.chosen) if result.chosen is not None else None,
        "confidence": result.confidence,
        "stop_reason": result.stop_reason,
        **({"card": result.card} if getattr(result, "card", None) else {}),  # the budget's source and why
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
    """Write one request's record (``ade_extra`` is merged into ``meta.ade``, e.g. the export that
    served it). A request whose every attempt failed has no attempt to log (v1 requires one), so it
    goes to ``failed-requests.log`` beside the shards instead of being lost; None is returned then."""
    ade_meta = {**result_meta(result), **(ade_extra or {})}
    record = build_record(request, result.attempts, backbone, ade_meta=ade_meta, writer=writer)
    result.record = record
    if record.attempts:
        writer.write(record)
        return record
    _append_failed(writer, record.id, record.instruction, record.source_image, backbone, record.meta)
    return None


def log_error(
    writer: TraceWriter, request: EditRequest, error: str, backbone: str, ade_extra: dict[str, Any]
) -> None:
    """Record a request that failed with an internal error (no attempt to log) in ``failed-requests.log``."""
    rid = request_id(request)
    source_rel = writer.write_image(f"images/{rid}/source.png", request.image)
    meta = {**request.meta, "ade": {"version": __version__, "error": error, **ade_extra}}
    _append_failed(writer, rid, request.instruction, source_rel, backbone, meta)


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
