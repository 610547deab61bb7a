"""The LitServe API of ``ade-serve``: one backbone worker per device, one request at a time.

``setup`` loads the backbone and the predictors (strictly) once per worker and opens the
worker's own trace shard stream (``serve-w<k>``); ``decode_request`` validates the payload;
``predict`` swaps in a new export if one appeared, runs ``AdaptiveEditor.edit`` with the
request's policy, seed and deadline, logs the request as a trace (export fingerprint
included) and records the metrics; ``encode_response`` returns the image (base64 PNG in the
JSON, or PNG bytes) with the summary. Candidates stay sequential inside the loop, so a worker
holds one sample at a time.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import signal
import time
import uuid
from dataclasses import replace

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import Response

from ade_runtime.backbones import load_backbone
from ade_runtime.backbones.base import EditRequest
from ade_runtime.errors import InputError
from ade_runtime.images import image_bytes
from ade_runtime.loop import AdaptiveEditor, EditResult
from ade_runtime.serve import metrics
from ade_runtime.serve.exports import ExportWatcher, load_strict
from ade_runtime.serve.inputs import UPLOAD_RE, BadRequest, EditJob, Limits, parse_payload
from ade_runtime.serve.shared import ServeState, die_with_parent
from ade_runtime.stack import backbone_meta, build_scorer, parse_pipeline_kwargs

log = logging.getLogger(__name__)

MAX_HEADER = 8000
ABS_PATH_RE = re.compile(r"(?<![\w.])(?:/[\w.@+-]+)+/([\w.@+-]+)")
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer


class Cancelled(BaseException):
    """The client went away: stop before the next attempt (a BaseException so that the loop's
    per-attempt ``except Exception`` fallback does not swallow it)."""


class _Cancellable:
    """The backbone, with a check for a cancelled request before each attempt."""

    def __init__(self, backbone, cancelled) -> None:
        self._backbone = backbone
        self._cancelled = cancelled

    def __getattr__(self, name):
        return getattr(self._backbone, name)

    def run(self, state, spec):
        if self._cancelled():
            raise Cancelled()
        return self._backbone.run(state, spec)


def redact(text: str, *roots) -> str:
    """A client-facing message without the server's absolute paths (the export's, the traces' ...)."""
    for root in roots:
        if root:
            for form in {str(root), str(os.path.abspath(root))}:
                text = text.replace(form.rstrip("/") + "/", "").replace(
                    form, os.path.basename(form.rstrip("/"))
                )
    return ABS_PATH_RE.sub(r"\1", text)


class EditAPI(ls.LitAPI):
    """``POST /edit``. ``args`` are ade-serve's parsed options (picklable: workers are spawned)."""

    def __init__(
        self,
        args: argparse.Namespace,
        limits: Limits | None = None,
        state: ServeState | None = None,
        upload_dir: str | None = None,
        stall_seconds: float | None = None,
    ) -> None:
        super().__init__(api_path="/edit", max_batch_size=1)
        self.args = args
        self.limits = limits or Limits(max_image_bytes=args.max_image_bytes)
        self.state = state or ServeState(1)
        self.upload_dir = upload_dir
        self.stall_seconds = stall_seconds

    def health(self) -> bool:
        """``/ready`` (in the HTTP process): not ready while every worker is stuck on one request."""
        return self.stall_seconds is None or not self.state.stalled(self.stall_seconds)

    # -- worker lifetime --------------------------------------------------------------------------
    def setup(self, device: str) -> None:
        a = self.args
        if "LITSERVE_WORKER_ID" in os.environ:  # a LitServe worker: die with the launcher (SIGTERM: drain)
            die_with_parent(signal.SIGTERM)
        self.worker = int(os.environ.get("LITSERVE_WORKER_ID", "0"))
        if str(a.device).startswith("cuda:"):
            device = a.device  # the user pinned a GPU; LitServe numbers its devices from 0
        self.watcher = ExportWatcher(
            a.predictors, loader=lambda d: load_strict(d, device=device, allow_fallback=a.allow_fallback)
        )
        self.watcher.load()
        self.backbone = load_backbone(
            a.backbone,
            model=a.model,
            device=device,
            dtype=a.dtype,
            cpu_offload=a.cpu_offload,
            srm=a.srm,
            pipeline_kwargs=parse_pipeline_kwargs(a.pipeline_kwargs),
        )
        self.backbone_meta = backbone_meta(self.backbone)
        self.scorer = build_scorer(a.scorer, a.backbone, device=device)
        self.base_policy = self.watcher.predictors.policy if self.watcher.predictors else None
        self.writer = None
        if a.trace_dir:
            from ade_runtime.traces import TraceWriter
            from ade_runtime.traces.serving import SERVE_LIMITS

            self.writer = TraceWriter(a.trace_dir, prefix=f"serve-w{self.worker}", limits=SERVE_LIMITS)
        self.served: set[str] = set()
        self.busy = False
        self.stopping = False
        if "LITSERVE_WORKER_ID" in os.environ:  # only in a LitServe worker process
            signal.signal(signal.SIGTERM, self._on_sigterm)
        log.info("worker %d ready on %s, export %s", self.worker, device, self.watcher.fingerprint)

    def _on_sigterm(self, signum, frame) -> None:
        # LitServe terminates workers only after the HTTP servers drained their requests; every trace
        # line is already fsynced, closing the shard is the flush. A busy worker finishes first.
        self.stopping = True
        if not self.busy:
            self.close()
            raise SystemExit(0)

    def close(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()

    # -- one request ------------------------------------------------------------------------------
    def decode_request(self, request):  # no annotations: LitServe reads them as FastAPI types
        try:
            job = parse_payload(
                request,
                default_policy=self.args.policy,
                base_policy=self.base_policy,
                limits=self.limits,
                image=self._upload(request),
            )
        except BadRequest as exc:
            raise HTTPException(exc.status, redact(str(exc), self.args.predictors)) from None
        if self.state.is_cancelled(job.ticket):  # queued, and its client is gone: no work at all
            raise HTTPException(CLIENT_CLOSED, "the client closed the connection before the request started")
        return job

    def _upload(self, request) -> bytes | None:
        """The image the HTTP gate stored in the run directory (the queue carries only its name)."""
        name = request.get("_upload") if hasattr(request, "get") else None
        if name is None:
            return None
        if not (isinstance(name, str) and UPLOAD_RE.fullmatch(name) and self.upload_dir):
            raise BadRequest(400, "field '_upload' is internal; send the image in 'image'")
        try:
            with open(os.path.join(self.upload_dir, name), "rb") as f:
                return f.read()
        except OSError:
            raise BadRequest(
                400, "the uploaded image is gone (the client disconnected?); send it again"
            ) from None

    def predict(self, job: EditJob) -> dict:
        self.busy = True
        self.state.busy(self.worker)
        try:
            return self._predict(job)
        except Cancelled:
            raise HTTPException(
                CLIENT_CLOSED, "the client closed the connection; stopped before the next attempt"
            ) from None
        finally:
            self.state.idle(self.worker)
            self.busy = False
            if self.stopping:
                self.close()
                if os.getppid() != int(os.environ.get("ADE_SERVE_PARENT_PID", os.getppid())):
                    os._exit(0)  # the launcher is gone (SIGKILL): nobody will read this answer

    def _swap(self) -> None:
        event = self.watcher.check()
        if event is not None:
            metrics.SWAPS.labels(event[0]).inc()

    def _predict(self, job: EditJob) -> dict:
        self._swap()
        rid = job.request.id if job.request.id != "request" else f"req-{uuid.uuid4().hex[:16]}"
        if rid in self.served:
            raise HTTPException(409, f"id {rid!r} was already served; send a new id (or none)")
        request = replace(job.request, id=rid, meta={**job.request.meta, **self.backbone_meta})
        self._claim(request)  # before any work
        fp = self.watcher.fingerprint
        deadline = job.max_seconds
        self._check_first_attempt(job, deadline)
        extra = {
            "export": fp,
            "server": {"worker": self.worker, "policy": job.policy, "max_seconds": deadline},
        }
        backbone = _Cancellable(self.backbone, lambda: self.state.is_cancelled(job.ticket))
        editor = AdaptiveEditor(
            backbone, self.watcher.predictors, policy=job.policy, scorer=self.scorer, seed=job.seed
        )
        t0 = time.perf_counter()
        try:
            result = editor.edit(request, max_seconds=deadline)
        except InputError as exc:  # the backbone refused this input (e.g. the testbed needs testbed images)
            if self.writer is not None:
                self.writer.release(rid)  # no record: the id may be sent again
            raise HTTPException(422, redact(str(exc), self.args.predictors)) from None
        except Exception as exc:
            raise self._internal_error(request, rid, f"{type(exc).__name__}: {exc}", extra) from None
        wall = time.perf_counter() - t0
        self.served.add(rid)
        failures = list(result.failures)
        self._log(result, rid, extra, failures)
        metrics.observe_result(result, self._verifier_calls(editor, result))
        failures = [self._public(f) for f in failures]
        if result.image is None:
            raise HTTPException(
                500,
                {
                    "error": "every attempt failed; nothing to return",
                    "request_id": rid,
                    "failures": failures,
                },
            )
        s = result.summary()
        s.update(
            id=rid,
            failures=failures,
            decisions=result.decisions,
            gpu_seconds=round(result.seconds, 4),
            seconds_kind="modelled" if self.backbone.name.startswith("testbed") else "measured",
            wall_seconds=round(wall, 4),
            export=fp,
            policy=job.policy,
            max_seconds=deadline,
            worker=self.worker,
        )
        return {"png": image_bytes(result.image), "summary": s, "response": job.response}

    def _claim(self, request: EditRequest) -> None:
        """Claim the request's id in the traces: unique in the dataset (across restarts and workers) and
        the record fits, or the request is refused; no writer, nothing to claim."""
        if self.writer is None:
            return
        from ade_runtime.errors import TraceError
        from ade_runtime.traces import DuplicateRecordId, RecordRefused
        from ade_runtime.traces.serving import claim_request

        rid = request.id
        try:
            claim_request(self.writer, request, self.backbone.name)
        except DuplicateRecordId:  # no detail: it would name the writer's pid and host
            raise HTTPException(
                409, f"id {rid!r} is already used in the traces; send a new id (or none)"
            ) from None
        except RecordRefused as exc:
            raise HTTPException(422, str(exc)) from None
        except TraceError as exc:  # the trace directory is unusable (disk full, removed): no edit untraced
            log.error("request %s: cannot claim its id: %s", rid, exc)
            raise HTTPException(503, "the trace directory cannot be written; try again later") from None

    def _log(self, result: EditResult, rid: str, extra: dict, failures: list[dict]) -> None:
        """Write served request ``rid`` as a trace record; a failure is appended to ``failures``, not raised."""
        if self.writer is None:
            return
        from ade_runtime.traces.serving import log_request

        try:
            log_request(self.writer, result.request, result, self.backbone.name, ade_extra=extra)
        except Exception as exc:  # the edit is done: answer it, and say the trace is missing
            log.error("request %s: trace not written: %r", rid, exc)
            failures.append({"stage": "trace", "error": repr(exc)})
            metrics.FAILURES.labels("trace").inc()

    def _public(self, failure: dict) -> dict:
        """A failure as the client sees it: no traceback, no server path."""
        return {
            k: redact(v, self.args.predictors, self.args.trace_dir) if isinstance(v, str) else v
            for k, v in failure.items()
            if k != "trace"
        }

    def _check_first_attempt(self, job: EditJob, deadline: float) -> None:
        """Reasoning tokens count against the deadline: where the backbone models its cost (the
        testbed), a request whose first attempt alone would exceed its deadline is refused."""
        cost = getattr(self.backbone, "cost", None)
        tokens = job.config.reasoning_tokens or 0
        if not (tokens and self.backbone.supports_reasoning and hasattr(cost, "latency")):
            return
        first = float(cost.latency(cost.nfe, tokens))
        if first > deadline:
            raise HTTPException(
                422,
                f"policy {job.policy!r}: one attempt with {tokens} reasoning tokens takes about {first:.0f} s, "
                f"over the deadline of {deadline:g} s; ask for fewer tokens or a longer max_seconds",
            )

    def _internal_error(self, request, rid: str, error: str, extra: dict) -> HTTPException:
        log.exception("request %s failed", rid)
        if self.writer is not None:
            from ade_runtime.traces.serving import log_error

            try:
                log_error(self.writer, request, error, self.backbone.name, {**extra, "request_id": rid})
            except Exception:
                log.exception("request %s: error not recorded", rid)
        return HTTPException(
            500, {"error": "internal error; the request's trace records it", "request_id": rid}
        )

    def _verifier_calls(self, editor: AdaptiveEditor, result: EditResult) -> dict[str, int]:
        judged = [a for a in result.attempts if a.output is not None and a.output.image is not None]
        judged = [a for a in judged if not a.output.pruned]
        p = editor.predictors
        previews = 0
        if editor.config.prune_threshold is not None and self.backbone.supports_preview:
            previews = sum(1 for a in result.attempts if a.output is not None and a.step.round == 0)
        return {
            "score": len(judged) if self.scorer is not None else 0,
            "critique": len(judged) if p.critique is not None else 0,
            "calibration": len(judged) if p.calibrator is not None else 0,
            "preview": previews,
        }

    def encode_response(self, output):
        if output["response"] == "image":
            header = json.dumps(output["summary"], sort_keys=True, default=float)
            if len(header) > MAX_HEADER:  # clients cap header sizes; the trace keeps every decision
                header = json.dumps({**output["summary"], "decisions": None}, sort_keys=True, default=float)
            return Response(content=output["png"], media_type="image/png", headers={"X-ADE-Summary": header})
        return {
            "id": output["summary"]["id"],
            "image": base64.b64encode(output["png"]).decode("ascii"),
            "format": "png",
            "summary": output["summary"],
        }
