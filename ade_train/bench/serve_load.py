"""Bench part ``serve_load``: ``ade-serve`` under load and past its capacity, on loopback.

    make bench-serve-load            # or: python -m ade_train.bench.serve_load --out docs/results

A real ``ade-serve`` (testbed backbone, a tiny untrained CARD + calibrator export, one CPU worker,
traces logged) on 127.0.0.1, measured in two ways with httpx clients in this process:

1. **Capacity** (closed loop): 1, 4 and 16 clients each send the next request as soon as the last
   one is answered, for ``--seconds``; throughput and p50/p95 latency of the answers.
2. **Overload** (open loop): requests arrive at ``--overload`` times the best measured
   throughput for ``--seconds``, whatever the answers; the share of 200 / 429 / 503, the
   ``Retry-After`` values, and the latency of the accepted requests, once with shedding
   (``--queue-timeout`` short) and once without (the queue may grow to every request).

Everything runs on this machine's CPUs, clients included, so figures are this machine's, not a
GPU server's; the testbed's attempts take milliseconds where a real backbone takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ade_train.bench.parts import part_target, write_part

POLICY = "ade"  # the capacity runs
HEAVY = "best_of_8"  # the overload runs: the worker, not the HTTP layer or the client, is the bottleneck


def tiny_export(d: Path) -> Path:
    """An untrained CARD + calibrator export (no critique: served with --allow-fallback)."""
    import torch

    from ade_runtime.encoders import build_image_encoder, build_text_encoder
    from ade_runtime.policy import PolicyConfig
    from ade_runtime.predictors.calibration import CalibrationConfig, Calibrator
    from ade_runtime.predictors.card import CardConfig, CardModel, CardPredictor
    from ade_runtime.predictors.features import RequestFeaturizer

    torch.manual_seed(0)
    feat = RequestFeaturizer(
        build_text_encoder({"kind": "hashing", "dim": 64}), build_image_encoder({"kind": "pixels"})
    )
    cfg = CardConfig(input_dim=feat.dim, levels=[1, 2, 4], token_levels=[0, 512], hidden=[16])
    CardPredictor(CardModel(cfg), feat).save_pretrained(d)
    policy = PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)
    t = {
        "mean": torch.zeros(1),
        "scale": torch.ones(1),
        "weight": torch.tensor([6.0]),
        "bias": torch.tensor([-1.0]),
    }
    Calibrator(
        CalibrationConfig(feature_names=("clip_t",), method="logistic", policy=policy), primary=t
    ).save_pretrained(d)
    return d


def sources(d: Path, n: int = 8) -> list[tuple[str, str]]:
    """Testbed source images (base64 PNG, with the testbed's chunk) and their instructions."""
    from ade_runtime.testbed import World, save_png
    from ade_runtime.testbed.imageio import make_image

    world = World(seed=11)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), d / f"{i}.png")
        out.append((base64.b64encode((d / f"{i}.png").read_bytes()).decode(), r.instruction))
    return out


class Served:
    """``ade-serve`` in a child process on a free loopback port."""

    def __init__(self, export: Path, work: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ade_runtime.serve.server", "--backbone", "testbed", "--device", "cpu"]
        cmd += [
            "--predictors",
            str(export),
            "--allow-fallback",
            "--trace-dir",
            str(work / f"traces-{self.port}"),
        ]
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def __enter__(self) -> Served:
        import httpx

        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ade-serve exited with {self.proc.returncode} before it was ready")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("ade-serve was not ready within 180 s")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _post(client, url: str, src: tuple[str, str], policy: str) -> tuple[int, float, str | None]:
    import httpx

    t0 = time.perf_counter()
    try:
        r = await client.post(url + "/edit", json={"image": src[0], "instruction": src[1], "policy": policy})
    except httpx.HTTPError:
        return 0, time.perf_counter() - t0, None
    return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")


async def closed_loop(
    url: str, srcs, clients: int, seconds: float, policy: str = POLICY
) -> tuple[list[tuple[int, float, str | None]], float]:
    import httpx

    out: list[tuple[int, float, str | None]] = []
    t0 = time.monotonic()
    end = t0 + seconds
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:

        async def client(k: int) -> None:
            i = k
            while time.monotonic() < end:
                out.append(await _post(c, url, srcs[i % len(srcs)], policy))
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return out, time.monotonic() - t0


async def open_loop(
    url: str, srcs, rate: float, seconds: float, policy: str = HEAVY
) -> tuple[list[tuple[int, float, str | None]], float]:
    import httpx

    n = max(1, int(rate * seconds))
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=1000)) as c:
        t0 = time.monotonic()

        async def one(i: int):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            return await _post(c, url, srcs[i % len(srcs)], policy)

        rows = list(await asyncio.gather(*(one(i) for i in range(n))))
        return rows, time.monotonic() - t0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summarize(run: tuple[list, float]) -> dict:
    """Statuses, answered/s over the run (until the last answer), latency of the 200s, the shed ones."""
    rows, seconds = run
    ok = [lat for code, lat, _ in rows if code == 200]
    codes: dict[str, int] = {}
    for code, _, _ in rows:
        codes[str(code)] = codes.get(str(code), 0) + 1
    shed = [(lat, ra) for code, lat, ra in rows if code in (429, 503)]
    retry = [int(ra) for _, ra in shed if ra is not None and ra.isdigit()]
    return {
        "requests": len(rows),
        "elapsed_s": seconds,
        "statuses": codes,
        "throughput_rps": len(ok) / seconds,
        "p50_ms": 1000 * _pct(ok, 50),
        "p95_ms": 1000 * _pct(ok, 95),
        "shed_share": len(shed) / len(rows) if rows else 0.0,
        "shed_with_retry_after": len(retry),
        "retry_after_s": {"min": min(retry), "median": statistics.median(retry), "max": max(retry)}
        if retry
        else None,
        "shed_p50_ms": 1000 * _pct([lat for lat, _ in shed], 50),
    }


def measure(args) -> dict:
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="ade-serve-load-") as tmp:
        work = Path(tmp)
        export = tiny_export(work / "export")
        srcs = sources(work / "sources")
        warm = min(2.0, args.seconds)
        f: dict = {"policy": POLICY, "overload_policy": HEAVY, "seconds": args.seconds, "capacity": {}}
        with Served(export, work, "--queue-timeout", str(args.queue_timeout)) as s:
            asyncio.run(closed_loop(s.url, srcs, 1, warm))
            for c in clients:
                rows = asyncio.run(closed_loop(s.url, srcs, c, args.seconds))
                f["capacity"][str(c)] = summarize(rows)
            rows = asyncio.run(closed_loop(s.url, srcs, 4, args.seconds, HEAVY))
            f["overload_capacity"] = summarize(rows)
            rate = args.overload * max(f["overload_capacity"]["throughput_rps"], 1.0)
            f.update(offered_rps=rate, queue_timeout_s=args.queue_timeout, overload={})
            rows = asyncio.run(open_loop(s.url, srcs, rate, args.seconds))
            f["overload"]["shedding"] = summarize(rows)
        if args.baseline:
            # the same overload with shedding off: every request queued (no connection limit either)
            off = ["--queue-timeout", "3600", "--max-queue", "100000", "--max-connections", "100000"]
            with Served(export, work, *off) as s:
                asyncio.run(closed_loop(s.url, srcs, 1, warm, HEAVY))
                rows = asyncio.run(open_loop(s.url, srcs, rate, args.seconds))
                f["overload"]["no_shedding"] = summarize(rows)
    return f


def markdown(f: dict) -> list[str]:
    lines = [
        "## Serving under load (`ade-serve`, testbed, loopback)",
        "",
        f"One CPU worker, policy `{f['policy']}`, a tiny untrained export, traces logged; clients in the same "
        f"process on the same 2 shared cores. {f['seconds']:g} s per measurement.",
        "",
        "| clients | answered/s | p50 ms | p95 ms | statuses |",
        "|---:|---:|---:|---:|---|",
    ]
    for c, s in f["capacity"].items():
        lines.append(
            f"| {c} | {s['throughput_rps']:.1f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | {s['statuses']} |"
        )
    cap = f["overload_capacity"]
    lines += [
        "",
        f"Overload: policy `{f['overload_policy']}` (8 attempts a request, so that the worker is the bottleneck), "
        f"whose capacity is {cap['throughput_rps']:.1f} answers/s with 4 clients (p50 {cap['p50_ms']:.0f} ms); "
        f"requests offered at {f['offered_rps']:.1f}/s (open loop, {f['offered_rps'] / max(cap['throughput_rps'], 1e-9):.1f}x), "
        f"`--queue-timeout {f['queue_timeout_s']:g}`; answered/s counts 200s until the last answer.",
        "",
        "| server | answered/s | accepted p50 / p95 ms | shed (429/503) | Retry-After s (min/median/max) | shed answer p50 ms | statuses |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for name, s in f["overload"].items():
        ra = s["retry_after_s"]
        ra_txt = f"{ra['min']}/{ra['median']:g}/{ra['max']}" if ra else "-"
        lines.append(
            f"| {name.replace('_', ' ')} | {s['throughput_rps']:.1f} | {s['p50_ms']:.0f} / {s['p95_ms']:.0f} | "
            f"{100 * s['shed_share']:.0f}% | {ra_txt} | {s['shed_p50_ms']:.0f} | {s['statuses']} |"
        )
    lines += [
        "",
        "With shedding, a request the queue cannot serve within the queue timeout is told so at once "
        "(503 + `Retry-After`) and the accepted ones keep a bounded latency; a request admitted on the "
        "estimate that still waits past the timeout gets 504. Without shedding every request is held "
        "and latency grows with the backlog. Wall figures of this shared 2-core machine, clients "
        "included (testbed backbone: a synthetic CPU world, not a real model).",
    ]
    return lines


def targets(f: dict) -> tuple[list[dict], list[str]]:
    out, misses = [], []
    errors = sum(n for s in f["capacity"].values() for code, n in s["statuses"].items() if code != "200")
    out.append(
        part_target("serve_load: no error at 1/4/16 clients", f"{errors} non-200", errors == 0, float(errors))
    )
    shed = f["overload"]["shedding"]
    bad = {c: n for c, n in shed["statuses"].items() if c not in ("200", "429", "503", "504")}
    with_ra = shed["shed_with_retry_after"] == sum(
        n for c, n in shed["statuses"].items() if c in ("429", "503")
    )
    ok = not bad and with_ra
    out.append(
        part_target(
            "serve_load: overload answered 200, 429/503 + Retry-After, or 504",
            f"other: {bad or 'none'}",
            ok,
            float(sum(bad.values())),
        )
    )
    bound = 1000 * 2 * f["queue_timeout_s"]
    p95 = shed["p95_ms"]
    out.append(part_target(
        "serve_load: accepted p95 under overload <= 2 x queue timeout", f"{p95:.0f} ms (bound {bound:.0f} ms)",
        p95 <= bound, max(0.0, (p95 - bound) / bound),
    ))  # fmt: skip
    for t in out:
        if not t["met"]:
            misses.append(f"{t['target']}: {t['value']}")
    return out, misses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ade_train.bench.serve_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="docs/results")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--overload", type=float, default=3.0, help="offered rate / the best measured throughput")
    p.add_argument("--queue-timeout", type=float, default=2.0, help="ade-serve's --queue-timeout (shedding)")
    p.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the run without shedding"
    )
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    figures = measure(args)
    tg, misses = targets(figures)
    path = write_part(args.out, "serve_load", figures, markdown(figures), targets=tg, misses=misses)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
