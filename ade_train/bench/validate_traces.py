"""Benchmark ``ade-traces validate`` on a generated dataset (10,000 requests x 16 attempts by default).

Generates the dataset with ``TraceWriter(fsync=False)`` (tiny shared images: 16 files named by
every record, so the per-path header cache is exercised), then times the real CLI in a child
process pinned to one core, and prints one JSON line with seconds and records/s.

    .venv/bin/python -m ade_train.bench.validate_traces [--requests 10000] [--attempts 16] [--images header]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ade_runtime.traces import Attempt, Cost, EditRecord, Flaw, Judge, TraceWriter


def generate(root: Path, n_requests: int, n_attempts: int, n_images: int = 16) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with TraceWriter(root, fsync=False) as w:
        images = [
            w.write_image(f"images/shared_{i:02d}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
            for i in range(n_images)
        ]
        rounds = 4
        for r in range(n_requests):
            attempts = []
            for k in range(n_attempts):
                cand, rnd = divmod(k, rounds)
                passed = bool(rng.random() < 0.3)
                attempts.append(
                    Attempt(
                        candidate=cand,
                        round=rnd,
                        reasoning_tokens=0,
                        prompt=f"make the mug blue, attempt {k}",
                        cost=Cost(nfe=28, latency_s=float(rng.uniform(2, 6))),
                        image=images[(r + k) % n_images],
                        scores={"clip_t": float(rng.random()), "clip_i": float(rng.random())},
                        judge=Judge(
                            score=float(rng.random()),
                            passed=passed,
                            flaws=() if passed else (Flaw("wrong_color", (0.1, 0.2, 0.5, 0.6)),),
                        ),
                    )
                )
            w.write(
                EditRecord(
                    id=f"req-{r:06d}",
                    instruction="Turn the red mug blue",
                    source_image=images[r % n_images],
                    backbone="flux-kontext",
                    category="color",
                    meta={"seed": r},
                    attempts=attempts,
                )
            )
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--attempts", type=int, default=16)
    p.add_argument("--images", choices=("none", "header", "decode"), default="header")
    p.add_argument("--out", help="dataset directory to (re)use; default a temporary directory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp) / "traces"
        write_s = generate(root, args.requests, args.attempts) if not list(root.glob("*.jsonl")) else None
        cmd = [str(Path(sys.executable).with_name("ade-traces")), "validate", str(root), "--quiet"]
        cmd += {"none": ["--no-images"], "header": [], "decode": ["--decode"]}[args.images]
        cpu = min(os.sched_getaffinity(0))
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        res = subprocess.run(
            cmd, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
        )
        seconds = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU time of the child: on a shared machine wall time also counts other people's work
        cpu_seconds = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        summary = json.loads(res.stdout.splitlines()[-1])
        shard_bytes = sum(f.stat().st_size for f in root.glob("*.jsonl"))
    out = {
        "bench": "validate",
        "requests": summary["records"],
        "valid": summary["valid"],
        "attempts_per_request": args.attempts,
        "images": args.images,
        "exit_code": res.returncode,
        "seconds": round(seconds, 3),
        "seconds_in_scan": summary["seconds"],
        "cpu_seconds": round(cpu_seconds, 3),
        "records_per_cpu_s": round(summary["records"] / cpu_seconds, 1),
        "records_per_s": round(summary["records"] / seconds, 1),
        "shard_mib": round(shard_bytes / (1 << 20), 2),
        "write_seconds": None if write_s is None else round(write_s, 3),
    }
    print(json.dumps(out))
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
