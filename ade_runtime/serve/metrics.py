"""Prometheus metrics of ``ade-serve`` (prometheus-client, multiprocess mode).

The HTTP server and the backbone workers are separate processes, so the server sets
``PROMETHEUS_MULTIPROC_DIR`` before any of them starts; each process writes its own files and
``GET /metrics`` aggregates them with ``MultiProcessCollector``. Importing this module in a
process without that variable gives ordinary in-process metrics (tests, library use).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("ade_serve_requests", "HTTP requests to POST /edit by status code", ["status"])
WALL = Histogram(
    "ade_serve_request_wall_seconds",
    "wall-clock seconds per POST /edit, queueing included",
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)
ATTEMPTS = Histogram(
    "ade_serve_attempts", "attempts run per served request", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
)
NFE = Histogram(
    "ade_serve_nfe",
    "network function evaluations per served request",
    buckets=(50, 150, 300, 600, 1200, 2400, 4800),
)
GPU_SECONDS = Histogram(
    "ade_serve_gpu_seconds",
    "backbone + controller seconds per served request (modelled on the testbed, measured otherwise)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
CONFIDENCE = Histogram(
    "ade_serve_confidence",
    "calibrated confidence of the returned attempt",
    buckets=tuple(i / 10 for i in range(1, 11)),
)
STOP_REASONS = Counter("ade_serve_stop_reasons", "why the loop stopped", ["reason"])
FALLBACKS = Counter("ade_serve_fallbacks", "predictor failures answered by a documented fallback", ["stage"])
FAILURES = Counter("ade_serve_failures", "failures inside served requests (backbone, predictors)", ["stage"])
VERIFIER_CALLS = Counter("ade_serve_verifier_calls", "online checks run on attempts", ["kind"])
SWAPS = Counter("ade_serve_export_swaps", "hot swaps of the predictors export", ["result"])
INTERNAL_ERRORS = Counter("ade_serve_internal_errors", "requests answered 500 (see the request's trace)")


def observe_result(result, verifier_calls: dict[str, int]) -> None:
    """Record one served request's account."""
    ATTEMPTS.observe(len(result.attempts))
    NFE.observe(result.nfe)
    GPU_SECONDS.observe(result.seconds)
    STOP_REASONS.labels(result.stop_reason).inc()
    if result.confidence is not None:
        CONFIDENCE.observe(result.confidence)
    for f in result.failures:
        stage = str(f.get("stage", "unknown"))
        FAILURES.labels(stage).inc()
        if f.get("fallback"):
            FALLBACKS.labels(stage).inc()
    for kind, n in verifier_calls.items():
        if n:
            VERIFIER_CALLS.labels(kind).inc(n)


def render() -> tuple[bytes, str]:
    """The exposition text of every process (multiprocess mode) or of this one."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
