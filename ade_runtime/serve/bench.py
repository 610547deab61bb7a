"""Benchmark of ``ade-serve`` on the testbed: throughput and latency for ``ade`` vs ``best_of_8``.

    python -m ade_runtime.serve.bench --predictors checkpoints/bench/export --data data/heldout

For each policy it runs the same requests (1) directly through ``AdaptiveEditor.edit`` and (2)
through a real ``ade-serve`` subprocess on 127.0.0.1 (httpx client, traces logged), sequentially
to measure the server's own overhead per request (HTTP, base64, validation, queueing between
processes, trace logging, metrics) and with ``--concurrency`` clients to measure throughput.
Latency is reported both as wall-clock seconds on this CPU and as modelled GPU-seconds (the
testbed's cost model), which is what a GPU deployment would see per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def _stats(wall: list[float], gpu: list[float], total_wall: float) -> dict:
    n = len(wall)
    return {
        "n": n,
        "throughput_rps_wall": n / total_wall if total_wall > 0 else float("nan"),
        "wall_p50_ms": 1000 * _pct(wall, 50),
        "wall_p95_ms": 1000 * _pct(wall, 95),
        "wall_mean_ms": 1000 * sum(wall) / n,
        "gpu_s_p50": _pct(gpu, 50),
        "gpu_s_p95": _pct(gpu, 95),
        "gpu_s_mean": sum(gpu) / n,
        "throughput_rps_per_gpu_modelled": n / sum(gpu) if sum(gpu) > 0 else float("nan"),
    }


def load_requests(data: Path, n: int) -> list[tuple[bytes, str, str]]:
    from ade_runtime.traces import TraceDataset

    out = []
    for rec in TraceDataset(data, images="none"):
        out.append((Path(rec.resolve(rec.source_image)).read_bytes(), rec.instruction, rec.id))
        if len(out) >= n:
            break
    return out


def run_direct(predictors: str, policy: str, requests) -> dict:
    import io

    from PIL import Image

    from ade_runtime.backbones import load_backbone
    from ade_runtime.backbones.base import EditRequest
    from ade_runtime.loop import AdaptiveEditor
    from ade_runtime.predictors.bundle import Predictors
    from ade_runtime.testbed import online_scores

    editor = AdaptiveEditor(
        load_backbone("testbed"),
        Predictors.load(predictors, strict=True),
        policy=policy,
        scorer=online_scores,
    )
    wall, gpu = [], []
    t_all = time.perf_counter()
    for img, text, rid in requests:
        t0 = time.perf_counter()
        res = editor.edit(EditRequest(Image.open(io.BytesIO(img)), text, id=rid))
        wall.append(time.perf_counter() - t0)
        gpu.append(res.seconds)
    return _stats(wall, gpu, time.perf_counter() - t_all)


async def _post_all(url: str, policy: str, requests, concurrency: int, tag: str) -> tuple[list, list, float]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    wall: list[float] = []
    gpu: list[float] = []
    async with httpx.AsyncClient(timeout=300) as client:

        async def one(i, img, text):
            async with sem:
                t0 = time.perf_counter()
                r = await client.post(
                    url + "/edit",
                    json={
                        "image": base64.b64encode(img).decode(),
                        "instruction": text,
                        "policy": policy,
                        "id": f"{tag}-{i}",
                    },
                )
                wall.append(time.perf_counter() - t0)
                r.raise_for_status()
                gpu.append(r.json()["summary"]["gpu_seconds"])

        t_all = time.perf_counter()
        await asyncio.gather(*(one(i, img, text) for i, (img, text, _) in enumerate(requests)))
        return wall, gpu, time.perf_counter() - t_all


def run_server(predictors: str, requests, policies, concurrency: int) -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ade-serve-bench-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "ade_runtime.serve.server",
            "--backbone",
            "testbed",
            "--predictors",
            predictors,
        ]
        cmd += ["--trace-dir", str(Path(tmp) / "traces"), "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            t_end = time.monotonic() + 180
            while time.monotonic() < t_end:
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            out = {}
            for policy in policies:
                asyncio.run(_post_all(url, policy, requests[:5], 1, f"warm-{policy}"))
                seq = asyncio.run(_post_all(url, policy, requests, 1, f"seq-{policy}"))
                par = asyncio.run(_post_all(url, policy, requests, concurrency, f"par-{policy}"))
                out[policy] = {"sequential": _stats(*seq), f"concurrency_{concurrency}": _stats(*par)}
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ade_runtime.serve.bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--predictors", required=True)
    p.add_argument(
        "--data", required=True, help="testbed traces whose source images and instructions are sent"
    )
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--policies", default="ade,best_of_8")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    requests = load_requests(Path(args.data), args.requests)
    policies = args.policies.split(",")
    direct = {pol: run_direct(args.predictors, pol, requests) for pol in policies}
    served = run_server(args.predictors, requests, policies, args.concurrency)
    report = {"requests": len(requests), "concurrency": args.concurrency, "direct": direct, "server": served}
    for pol in policies:
        report.setdefault("overhead_ms_per_request", {})[pol] = (
            served[pol]["sequential"]["wall_mean_ms"] - direct[pol]["wall_mean_ms"]
        )
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
