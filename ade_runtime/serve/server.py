"""``ade-serve``: build the LitServe server around ``EditAPI`` and run it.

    ade-serve --backbone testbed --predictors checkpoints/card/export --trace-dir traces/ --port 8000

LitServe (Lightning's serving framework on FastAPI/uvicorn) runs the backbone workers as
processes, one per device (``--workers-per-device``), each serving its requests one at a time.
This module adds what LitServe does not: an ASGI gate in front of ``POST /edit`` (size limit,
content type, malformed JSON or multipart -> 4xx with the fix; a multipart form becomes the same
JSON the worker validates; requests counted by status), ``GET /health`` (liveness), ``GET /ready``
(LitServe's check that every worker has loaded backbone and predictors), ``GET /metrics``, and
SIGTERM handling: stop accepting, finish in-flight requests, flush, exit 0.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from ade_runtime.backbones import BACKBONE_NAMES
from ade_runtime.cli._common import add_backbone_args, resolve_device
from ade_runtime.cli._io import add_predictor_args
from ade_runtime.errors import ADEError
from ade_runtime.serve.inputs import DEFAULT_MAX_IMAGE_BYTES

log = logging.getLogger("ade_runtime.serve")


class EditGate:
    """ASGI middleware for ``POST /edit``: bounded body, JSON or multipart only, counted by status."""

    def __init__(self, app, path: str = "/edit", max_body_bytes: int = 2 * DEFAULT_MAX_IMAGE_BYTES) -> None:
        self.app = app
        self.path = path
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        from ade_runtime.serve import metrics

        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            body_or_error = await self._read(scope, receive)
            if isinstance(body_or_error, tuple):
                code, msg = body_or_error
                await _json_response(send_status, code, {"detail": msg})
                return
            body = body_or_error
            headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app({**scope, "headers": headers}, replay, send_status)
        finally:
            metrics.REQUESTS.labels(str(status["code"])).inc()
            metrics.WALL.observe(time.perf_counter() - t0)

    async def _read(self, scope, receive) -> bytes | tuple[int, str]:
        hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        length = hdrs.get("content-length")
        too_big = (413, f"the request body exceeds {self.max_body_bytes} bytes; resize or compress the image")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return too_big
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return (400, "the client disconnected before sending the whole body")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return too_big
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        raw = b"".join(chunks)
        ctype = hdrs.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                return (400, f"the body is not valid JSON ({exc}); send a JSON object")
            if not isinstance(obj, dict):
                return (400, "the JSON body must be an object with 'image' and 'instruction'")
            return raw
        if ctype == "multipart/form-data":
            return await self._form_to_json(scope, raw)
        return (
            415,
            f"content type {ctype or 'none'!r} is not accepted; send multipart/form-data (image file + fields) "
            "or application/json (image in base64)",
        )

    async def _form_to_json(self, scope, raw: bytes) -> bytes | tuple[int, str]:
        ctype = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        try:
            fields = parse_multipart(ctype, raw)
        except ValueError as exc:
            return (
                400,
                f"the multipart form cannot be parsed ({exc}); send fields 'image' (a file) and 'instruction'",
            )
        return json.dumps(fields).encode()


def parse_multipart(content_type: str, raw: bytes) -> dict[str, str]:
    """multipart/form-data -> {field: text}, files base64-encoded (stdlib email parser, RFC 7578)."""
    import email.parser
    import email.policy

    if "boundary=" not in content_type:
        raise ValueError("no boundary in the Content-Type header")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not msg.is_multipart():
        raise ValueError("the body is not multipart")
    out: dict[str, str] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise ValueError("a part has no name in its Content-Disposition")
        if name in out:
            raise ValueError(f"field '{name}' is given twice")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name == "image":
            out[name] = base64.b64encode(data).decode("ascii")
        else:
            out[name] = data.decode(part.get_content_charset() or "utf-8", "replace")
    return out


async def _json_response(send, status: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ade-serve", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    add_predictor_args(p, required=True, help="export directory of `make train` (hot-swapped when replaced)")
    p.add_argument("--trace-dir", default=None, help="log every served request here as v1 traces")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default), 0.0.0.0 or ::")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-seconds", type=float, default=None, help="deadline per request (GPU-seconds); caps max_seconds"
    )
    p.add_argument("--policy", default="ade", help="default policy (a request may name another)")
    p.add_argument("--workers-per-device", type=int, default=1, help="backbone workers per device")
    p.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES)
    p.add_argument(
        "--queue-timeout", type=float, default=300.0, help="seconds a request may wait for a worker (504)"
    )
    p.add_argument("--log-level", default="warning")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad options before any process starts (one line naming the option and the fix)."""
    from ade_runtime.errors import InputError
    from ade_runtime.policy import preset
    from ade_runtime.serve.exports import load_strict

    if args.backbone not in BACKBONE_NAMES:
        raise InputError(f"--backbone {args.backbone!r}: use one of {', '.join(BACKBONE_NAMES)}")
    if args.host not in ("127.0.0.1", "0.0.0.0", "::"):
        raise InputError(f"--host {args.host!r}: use 127.0.0.1, 0.0.0.0 or ::")
    if not 1024 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: use a port from 1024 to 65535")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise InputError(f"--max-seconds {args.max_seconds}: use a positive number of seconds")
    if args.workers_per_device < 1:
        raise InputError("--workers-per-device must be >= 1")
    resolve_device(args, "ade-serve")  # once, here: every worker gets the same concrete device
    # strict: a corrupt export stops the start, not the first request
    preds = load_strict(args.predictors, allow_fallback=args.allow_fallback)
    for line in preds.fallback_lines():
        print(f"ade-serve: {line}", file=sys.stderr)
    try:
        preset(args.policy, preds.policy)
    except ValueError as exc:
        raise InputError(f"--policy: {exc}") from None
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)


def build_server(args: argparse.Namespace):
    import litserve as ls
    from fastapi import Response

    from ade_runtime.serve import metrics
    from ade_runtime.serve.api import EditAPI

    device = args.device or "cpu"
    accelerator, devices = "cpu", 1
    if device.startswith("cuda"):
        # "cuda": one worker group per visible GPU; "cuda:N": one group, pinned to GPU N in EditAPI.setup
        accelerator, devices = "cuda", (1 if ":" in device else "auto")
    server = ls.LitServer(
        EditAPI(args),
        accelerator=accelerator,
        devices=devices,
        workers_per_device=args.workers_per_device,
        timeout=args.queue_timeout,
        healthcheck_path="/ready",
        middlewares=[(EditGate, {"max_body_bytes": 2 * args.max_image_bytes})],
    )

    async def health() -> Response:
        return Response(content="alive", media_type="text/plain")

    async def metrics_endpoint() -> Response:
        body, ctype = metrics.render()
        return Response(content=body, media_type=ctype)

    server.app.add_api_route("/health", health, methods=["GET"])
    server.app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    return server


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except ADEError as exc:
        print(f"ade-serve: {exc}", file=sys.stderr)
        return 2
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="ade-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir  # before any process imports prometheus_client
    try:
        server = build_server(args)

        def on_sigterm(signum, frame):
            # set LitServe's shutdown event from another thread: the main thread is blocked on it
            # through the same manager connection, which a signal handler must not reuse
            signal.signal(
                signal.SIGTERM, signal.SIG_IGN
            )  # once is enough; a second one must not kill the drain
            ev = server._shutdown_event
            if ev is not None:
                threading.Thread(target=ev.set, daemon=True).start()

        signal.signal(signal.SIGTERM, on_sigterm)
        print(
            f"ade-serve: serving {args.backbone} on http://{args.host}:{args.port} (POST /edit)",
            file=sys.stderr,
        )
        server.run(host=args.host, port=args.port, generate_client_file=False, log_level=args.log_level)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
