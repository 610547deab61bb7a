"""``ade-serve``: build the LitServe server around ``EditAPI`` and run it.

    ade-serve --backbone testbed --predictors checkpoints/card/export --trace-dir traces/ --port 8000

LitServe (Lightning's serving framework on FastAPI/uvicorn) runs the backbone workers as
processes, one per device (``--workers-per-device``), each serving its requests one at a time.
This module adds what LitServe does not: the ASGI gate (``gate.py``: auth before the body,
shedding, a bounded body read with a deadline, decoding off the event loop, disconnects, every
field bounded by the ``--max-*`` limits), ``GET /health`` (liveness), ``GET /ready`` (LitServe's
check that every worker has loaded, and 503 while every worker is stuck past
``--stall-seconds``), ``GET /metrics``, SIGTERM handling (stop accepting, finish in-flight
requests, flush, exit 0), and children that die with the launcher (``shared.die_with_parent``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ade_runtime.backbones import BACKBONE_NAMES
from ade_runtime.cli._common import add_backbone_args, resolve_device
from ade_runtime.cli._io import add_predictor_args
from ade_runtime.errors import ADEError
from ade_runtime.serve.inputs import DEFAULT_MAX_IMAGE_BYTES, Limits

log = logging.getLogger("ade_runtime.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ade-serve", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    add_predictor_args(p, required=True, help="export directory of `make train` (hot-swapped when replaced)")
    p.add_argument("--trace-dir", default=None, help="log every served request here as v1 traces")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default), 0.0.0.0 or ::")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key on every path but /health and /ready (X-API-Key or Authorization: Bearer); "
        "default: $ADE_API_KEY, else $LIT_SERVER_API_KEY, else no auth",
    )
    p.add_argument("--policy", default="ade", help="default policy (a request may name another)")
    p.add_argument("--workers-per-device", type=int, default=1, help="backbone workers per device")
    lim = p.add_argument_group("limits (a request asking for more gets 422 naming the limit)")
    lim.add_argument("--max-seconds", type=float, default=300.0, help="deadline per request (GPU-seconds)")
    lim.add_argument("--max-candidates", type=int, default=16, help="candidates per request")
    lim.add_argument("--max-rounds", type=int, default=4, help="rounds per candidate")
    lim.add_argument("--max-tokens", type=int, default=2048, help="reasoning tokens per attempt")
    lim.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES)
    load = p.add_argument_group("load and sockets")
    load.add_argument(
        "--queue-timeout",
        type=float,
        default=60.0,
        help="wall seconds a request may wait for a worker: 504 past it, 503 + Retry-After at once when "
        "the expected wait exceeds it",
    )
    load.add_argument("--max-queue", type=int, default=64, help="requests admitted per worker (more: 503)")
    load.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a body (408)")
    load.add_argument(
        "--stall-seconds",
        type=float,
        default=None,
        help="/ready is 503 while every worker has been on one request this long (default: 2 x --max-seconds)",
    )
    load.add_argument("--max-connections", type=int, default=256, help="connections per HTTP process (503)")
    p.add_argument("--log-level", default="warning")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad options before any process starts (one line naming the option and the fix)."""
    from ade_runtime.errors import InputError
    from ade_runtime.serve.exports import load_strict
    from ade_runtime.serve.inputs import check_policy

    if args.backbone not in BACKBONE_NAMES:
        raise InputError(f"--backbone {args.backbone!r}: use one of {', '.join(BACKBONE_NAMES)}")
    if args.host not in ("127.0.0.1", "0.0.0.0", "::"):
        raise InputError(f"--host {args.host!r}: use 127.0.0.1, 0.0.0.0 or ::")
    if not 1024 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: use a port from 1024 to 65535")
    if args.workers_per_device < 1:
        raise InputError("--workers-per-device must be >= 1")
    for name in ("queue_timeout", "body_timeout", "stall_seconds"):
        v = getattr(args, name)
        if v is not None and not 0 < v < 1e6:
            raise InputError(f"--{name.replace('_', '-')} {v}: use a positive number of seconds")
    for name in ("max_queue", "max_connections"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    limits = limits_of(args)
    resolve_device(args, "ade-serve")  # once, here: every worker gets the same concrete device
    # strict: a corrupt export stops the start, not the first request
    preds = load_strict(args.predictors, allow_fallback=args.allow_fallback)
    for line in preds.fallback_lines():
        print(f"ade-serve: {line}", file=sys.stderr)
    try:
        check_policy(args.policy, preds.policy, limits)
    except InputError as exc:
        raise InputError(f"--policy: {exc}") from None
    args.base_policy = preds.policy  # the gate checks policies against it before any work
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)


def limits_of(args: argparse.Namespace) -> Limits:
    return Limits(
        max_candidates=args.max_candidates,
        max_rounds=args.max_rounds,
        max_tokens=args.max_tokens,
        max_seconds=args.max_seconds,
        max_image_bytes=args.max_image_bytes,
    )


def api_key_of(args: argparse.Namespace) -> str | None:
    key = args.api_key or os.environ.get("ADE_API_KEY") or os.environ.get("LIT_SERVER_API_KEY")
    return key or None


def build_server(args: argparse.Namespace, run_dir: str):
    import litserve as ls
    import litserve.server as ls_server
    from fastapi import Response

    from ade_runtime.serve import metrics
    from ade_runtime.serve.api import EditAPI
    from ade_runtime.serve.gate import EditGate
    from ade_runtime.serve.shared import ServeState

    # one auth, ours, checked before the body is read; LitServe's (a FastAPI dependency, after parsing) is off
    ls_server.LIT_SERVER_API_KEY = None
    device = args.device or "cpu"
    accelerator, devices = "cpu", 1
    if device.startswith("cuda"):
        # "cuda": one worker group per visible GPU; "cuda:N": one group, pinned to GPU N in EditAPI.setup
        accelerator, devices = "cuda", (1 if ":" in device else "auto")
    limits = limits_of(args)
    uploads = Path(run_dir) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    stall = args.stall_seconds or 2 * args.max_seconds
    api = EditAPI(args, limits=limits, upload_dir=str(uploads), stall_seconds=stall)
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=args.workers_per_device,
        timeout=args.queue_timeout,
        healthcheck_path="/ready",
        disable_openapi_url=True,  # no /docs, /openapi.json: the API is docs/serving.md; less surface
    )
    # shared memory sized to the workers LitServe will start, inherited by them and the HTTP processes
    api.state = ServeState(len(server._inference_workers_config_for_api("/edit")))
    server.app.add_middleware(
        EditGate,
        state=api.state,
        upload_dir=uploads,
        limits=limits,
        api_key=api_key_of(args),
        default_policy=args.policy,
        base_policy=getattr(args, "base_policy", None),
        body_timeout=args.body_timeout,
        max_wait=args.queue_timeout,
        max_queue=args.max_queue,
    )

    # no return annotations: under `from __future__ import annotations` FastAPI cannot resolve them
    # and its OpenAPI schema failed with a 500 (issue #24)
    async def health():
        return Response(content="alive", media_type="text/plain")

    async def metrics_endpoint():
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
    from ade_runtime.serve.shared import install_launcher

    run_dir = tempfile.mkdtemp(prefix="ade-serve-")  # uploads in flight and (by default) the metrics
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.makedirs(os.path.join(run_dir, "metrics"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(run_dir, "metrics")  # before prometheus_client
    install_launcher()  # every child dies with this process, even on SIGKILL
    try:
        server = build_server(args, run_dir)

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
        server.run(
            host=args.host,
            port=args.port,
            generate_client_file=False,
            log_level=args.log_level,
            limit_concurrency=args.max_connections,
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
