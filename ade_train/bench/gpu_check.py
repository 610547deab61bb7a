"""``make gpu-check``: ADE's real-size code paths on one GPU, without weights or network.

    python -m ade_train.bench.gpu_check [--budget-s 540] [--tiny]

Builds FLUX.1 Kontext and then (after freeing it) Qwen-Image-Edit at their published sizes with
random bf16 weights directly on the GPU (``full_size.py``) and measures, through ADE's own adapters:
build time and GiB per component; one attempt at 1024^2; SRM's added memory and time; encode-once
vs re-encoding over 4 attempts; a pruned candidate vs a full one and the x0 preview; parity with a
plain ``pipe(...)`` call; model CPU offload with and without previews; Qwen-Image-Edit's true-CFG
attempt, full and pruned. Each step prints one flushed JSON line (``{"step": ..., ...}``, an
``error`` field when it failed), so a run cut short keeps what it measured; the last line is
``{"step": "summary", "checks": {name: "pass" | "fail" | "skipped"}, ...}``. Steps are skipped once
``--budget-s`` is spent. Random weights make the images meaningless: the figures are mechanics
(memory, time, calls), not quality.

Without CUDA (or with ``--tiny``) the same steps run on the CPU with tiny configs at 32^2 (what CI
runs; Qwen-Image-Edit's 1024^2 conditioning target is shrunk to 32^2 there); the lines say
``"mode": "cpu-tiny"`` and their times are not performance figures. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "make the sky red"
GIB = 2**30


@dataclass
class Plan:
    """Sizes of one run: ``full`` on CUDA in bf16, ``tiny`` on the CPU in float32."""

    mode: str
    device: str
    size: int  # square input side
    steps: int  # FLUX.1 Kontext's full schedule
    short_steps: int  # steps where only calls, memory or parity are measured
    qwen_steps: int
    parity_tolerance: int = 2  # 8-bit levels; GPU kernels may differ by a rounding step


FULL = Plan("gpu-full", "cuda", 1024, 28, 8, 50)
TINY = Plan("cpu-tiny", "cpu", 32, 4, 2, 3)


class Run:
    """Prints one JSON line per step, keeps pass/fail per check, stops starting steps past the budget."""

    def __init__(self, plan: Plan, budget_s: float, out=None):
        self.plan, self.budget_s, self.out = plan, budget_s, out or sys.stdout
        self.t0 = time.perf_counter()
        self.checks: dict[str, str] = {}

    def emit(self, line: dict[str, Any]) -> None:
        print(
            json.dumps({"mode": self.plan.mode, **line}, sort_keys=True, default=str),
            file=self.out,
            flush=True,
        )

    def step(self, name: str, fn, *args) -> Any:
        elapsed = time.perf_counter() - self.t0
        if elapsed > self.budget_s:
            self.checks[name] = "skipped"
            self.emit(
                {"step": name, "skipped": f"time budget spent ({elapsed:.0f} s > {self.budget_s:.0f} s)"}
            )
            return None
        t0 = time.perf_counter()
        try:
            result, ok = fn(*args)
        except Exception as exc:  # a check reports its failure as a line and the run goes on
            self.checks[name] = "fail"
            self.emit(
                {
                    "step": name,
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "step_s": _r(time.perf_counter() - t0),
                }
            )
            return None
        self.checks[name] = "pass" if ok else "fail"
        self.emit({"step": name, "ok": bool(ok), "step_s": _r(time.perf_counter() - t0), **result})
        return result


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _cuda(plan: Plan) -> bool:
    return plan.device.startswith("cuda")


def reset_peak(plan: Plan) -> None:
    import torch

    if _cuda(plan):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(plan: Plan) -> float | None:
    import torch

    return _r(torch.cuda.max_memory_allocated() / GIB) if _cuda(plan) else None


def free(plan: Plan) -> None:
    import torch

    gc.collect()
    if _cuda(plan):
        torch.cuda.empty_cache()


class Probe:
    """Wraps a decode function to record what it was given (dtype, finiteness) and its milliseconds."""

    def __init__(self, plan: Plan, fn):
        self.plan, self.fn, self.calls = plan, fn, []

    def __call__(self, *args, **kwargs):
        import torch

        latents = next(a for a in args if isinstance(a, torch.Tensor))
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if _cuda(self.plan):
            torch.cuda.synchronize()
        self.calls.append(
            {"dtype": str(latents.dtype).replace("torch.", ""), "finite": bool(torch.isfinite(latents).all()),
             "ms": _r(1000 * (time.perf_counter() - t0), 1)}
        )  # fmt: skip
        return out


@contextmanager
def probed(obj: Any, attr: str, plan: Plan):
    """Measurement instrumentation: ``obj.attr`` is a ``Probe`` inside, restored on exit."""
    had, original = attr in vars(obj), vars(obj).get(attr)
    probe = Probe(plan, getattr(obj, attr))
    setattr(obj, attr, probe)
    try:
        yield probe
    finally:
        if had:
            setattr(obj, attr, original)
        else:
            delattr(obj, attr)


def env_line(plan: Plan) -> tuple[dict[str, Any], bool]:
    import diffusers
    import torch
    import transformers

    try:
        import accelerate

        acc = accelerate.__version__
    except ImportError:
        acc = None
    line: dict[str, Any] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                            "transformers": transformers.__version__, "accelerate": acc}  # fmt: skip
    if _cuda(plan):
        free_b, total_b = torch.cuda.mem_get_info()
        line.update(gpu=torch.cuda.get_device_name(), total_gib=_r(total_b / GIB), free_gib=_r(free_b / GIB))
    return line, True


def image(plan: Plan) -> Any:
    from ade_train.bench.tiny_flux import test_image

    return test_image(plan.size, plan.size, seed=0)


@contextmanager
def tiny_qwen_area(plan: Plan):
    """CPU-tiny only: Qwen-Image-Edit's 1024^2 target area (``calculate_dimensions``) shrunk to the plan's."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as m

    real = m.calculate_dimensions
    if plan.mode == "cpu-tiny":
        m.calculate_dimensions = lambda area, ratio: real(plan.size**2, ratio)
    try:
        yield
    finally:
        m.calculate_dimensions = real


def check(plan: Plan, budget_s: float, out=None) -> dict[str, str]:
    """Run every step of ``plan``; returns the pass/fail/skipped map of the summary line."""
    from ade_train.bench import gpu_check_steps as steps

    run = Run(plan, budget_s, out)
    run.step("env", env_line, plan)
    ctx = steps.Context(plan)
    for build, fns in (("flux_build", steps.FLUX_STEPS), ("qwen_build", steps.QWEN_STEPS)):
        with tiny_qwen_area(plan) if build == "qwen_build" else nullcontext():
            built = run.step(build, getattr(steps, build), ctx) is not None
            for fn in fns:
                if built:
                    run.step(fn.__name__, fn, ctx)
                else:
                    run.checks[fn.__name__] = "skipped"
        ctx.flux = ctx.qwen = None  # free one model before building the next
        free(plan)
    failed = sorted(k for k, v in run.checks.items() if v == "fail")
    run.emit({"step": "summary", "checks": run.checks, "failed": failed,
              "total_s": _r(time.perf_counter() - run.t0, 1),
              "note": "random weights: mechanics (memory, time, calls), not quality"
              + ("; CPU at tiny sizes: not performance figures" if plan.mode == "cpu-tiny" else "")})  # fmt: skip
    return run.checks


SKIP_WHEELS = ("torch", "nvidia-", "triton", "cuda-", "setuptools", "pip")


def wheel_requirements(
    roots: tuple[str, ...] = ("diffusers", "transformers", "accelerate", "ade-adaptive"),
) -> list[str]:
    """``name==version`` of ``roots`` and everything they require here, without torch and its CUDA
    libraries (a GPU host brings its own): what ``make gpu-wheels`` downloads for a host without network."""
    import re
    from importlib import metadata

    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or key.startswith(SKIP_WHEELS):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist.version
        for req in dist.requires or []:
            if "extra ==" not in req:  # only what the package always needs
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    seen.pop("ade-adaptive", None)  # ADE itself travels as source
    return [f"{k}=={v}" for k, v in sorted(seen.items())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tiny", action="store_true", help="tiny configs on the CPU even where CUDA is available"
    )
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no step after this many seconds")
    ap.add_argument(
        "--requirements", action="store_true", help="print the pinned wheels a GPU host needs, exit"
    )
    args = ap.parse_args(argv)
    if args.requirements:
        print("\n".join(wheel_requirements()))
        return 0
    import torch

    plan = FULL if torch.cuda.is_available() and not args.tiny else TINY
    if plan is TINY and not args.tiny:
        print(json.dumps({"step": "note", "mode": plan.mode, "note": "no CUDA device: tiny configs on the CPU"}),
              flush=True)  # fmt: skip
    checks = check(plan, args.budget_s)
    return 1 if "fail" in checks.values() else 0


if __name__ == "__main__":
    sys.exit(main())
