"""Mechanics bench: ADE-style sequential candidates with pruning/early stop vs batched Best-of-8.

On the tiny in-code FluxKontextPipeline (ade_train/bench/tiny_flux.py; random weights, so this measures
compute and memory mechanics, not edit quality). Three modes, each in its own subprocess so peak
RSS is measured per mode (``ru_maxrss`` minus the RSS after building the pipeline and one warm-up
attempt):

- ``batched_bo8``: one pipeline call with ``num_images_per_prompt=8`` (diffusers' Best-of-N).
- ``sequential_bo8``: ``FluxKontextBackbone`` runs the 8 candidates one after another.
- ``ade``: sequential candidates with a one-step x0 preview at ``--preview-step``; a candidate whose
  preview score is below the prune threshold is interrupted; the request stops at the first kept
  candidate whose final score reaches the stop threshold.

The verifier is a deterministic stand-in (mean absolute change from the source, in [0, 1]); its
thresholds come from calibration seeds disjoint from the measured seeds. Wall time includes the
preview decodes and verifier calls. ``transformer_calls`` counts forward calls (a batched call is
one call on 8 samples); ``sample_evals`` counts per-sample evaluations (calls x batch).

Run: ``.venv/bin/python -m ade_train.bench.flux_mechanics [--size 32 --steps 8 --preview-step 2]``;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_CANDIDATES = 8
PROMPT = "make the sky red"
CALIBRATION_SEEDS = range(100, 100 + N_CANDIDATES)


def _rss_mb() -> float:
    """Peak RSS since the last ``_reset_peak`` (VmHWM), else the process's lifetime peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> None:
    """Start peak-RSS accounting afresh (Linux clear_refs 5), so set-up and imports do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def score(image, source) -> float:
    """Stand-in verifier: mean absolute pixel change from the source, in [0, 1]."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    b = np.asarray(source.convert("RGB").resize(image.size), dtype=np.float32)
    return float(np.abs(a - b).mean() / 255.0)


def _setup(args):
    import torch

    from ade_runtime.backbones.base import AttemptSpec, EditRequest
    from ade_runtime.backbones.flux_kontext import FluxKontextBackbone
    from ade_train.bench.tiny_flux import test_image, tiny_kontext_pipeline

    torch.set_num_threads(1)
    pipe = tiny_kontext_pipeline(num_layers=2, num_single_layers=2)
    bb = FluxKontextBackbone(pipe, num_inference_steps=args.steps, resolution="input", max_sequence_length=32)
    src = test_image(args.size, args.size)
    state = bb.prepare(EditRequest(src, PROMPT))
    bb.run(state, AttemptSpec(0, 0, 0, PROMPT, seed=999))  # warm-up: lazy allocations happen here
    return torch, pipe, bb, src, state, AttemptSpec


def _thresholds(bb, state, src, spec_cls, preview_step):
    previews, finals = [], []
    for seed in CALIBRATION_SEEDS:
        out = bb.run(
            state,
            spec_cls(0, 0, 0, PROMPT, seed=seed, preview_step=preview_step, preview_fn=lambda im, s: True),
        )
        previews.append(score(out.preview_image, src))
        finals.append(score(out.image, src))
    previews.sort()
    finals.sort()
    return previews[len(previews) // 2], finals[(3 * len(finals)) // 4]


def run_mode(mode: str, args) -> dict:
    torch, pipe, bb, src, state, spec_cls = _setup(args)
    extra: dict = {}
    if mode == "ade":
        prune_tau, stop_tau = _thresholds(bb, state, src, spec_cls, args.preview_step)
        extra.update(prune_threshold=prune_tau, stop_threshold=stop_tau)
    calls = [0, 0]

    def hook(module, a, kw):
        calls[0] += 1
        calls[1] += int(kw["hidden_states"].shape[0])

    base = _current_rss_mb()
    _reset_peak()
    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    t0 = time.perf_counter()
    if mode == "batched_bo8":
        w, h = src.size
        images = pipe(
            image=src, prompt=PROMPT, height=h, width=w, max_area=w * h, _auto_resize=False,
            num_inference_steps=args.steps, guidance_scale=2.5, max_sequence_length=32,
            num_images_per_prompt=N_CANDIDATES, generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip
        best = max(score(im, src) for im in images)
        extra.update(candidates_run=N_CANDIDATES, kept=N_CANDIDATES)
    elif mode == "sequential_bo8":
        outs = [bb.run(state, spec_cls(c, 0, 0, PROMPT, seed=c)) for c in range(N_CANDIDATES)]
        best = max(score(o.image, src) for o in outs)
        extra.update(candidates_run=N_CANDIDATES, kept=N_CANDIDATES)
    else:
        best, pruned, run = 0.0, 0, 0
        for c in range(N_CANDIDATES):
            out = bb.run(
                state,
                spec_cls(
                    c, 0, 0, PROMPT, seed=c, preview_step=args.preview_step,
                    preview_fn=lambda im, s: score(im, src) >= prune_tau,
                ),
            )  # fmt: skip
            run += 1
            if out.pruned:
                pruned += 1
                continue
            best = max(best, score(out.image, src))
            if best >= stop_tau:
                break
        extra.update(candidates_run=run, pruned=pruned, kept=run - pruned, stopped_early=run < N_CANDIDATES)
    wall = time.perf_counter() - t0
    handle.remove()
    return {
        "mode": mode,
        "transformer_calls": calls[0],
        "sample_evals": calls[1],
        "wall_s": round(wall, 4),
        "peak_rss_delta_mb": round(max(0.0, _rss_mb() - base), 2),
        "best_score": round(best, 5),
        **extra,
    }


def measure(size: int = 32, steps: int = 8, preview_step: int = 2) -> dict:
    """Run the three modes side by side, each in its own subprocess; returns the report dict."""
    results = {}
    for mode in ("batched_bo8", "sequential_bo8", "ade"):
        cmd = [sys.executable, "-m", "ade_train.bench.flux_mechanics", "--mode", mode, "--size", str(size)]
        cmd += ["--steps", str(steps), "--preview-step", str(preview_step)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "bench": "flux_mechanics",
        "pipeline": "tiny FluxKontextPipeline (random weights, CPU)",
        "size": size,
        "steps": steps,
        "preview_step": preview_step,
        "candidates": N_CANDIDATES,
        "results": results,
        "ade_sample_evals_vs_batched": round(
            results["ade"]["sample_evals"] / results["batched_bo8"]["sample_evals"], 4
        ),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="square image side (multiple of 2)")
    ap.add_argument("--steps", type=int, default=8, help="denoising steps")
    ap.add_argument("--preview-step", type=int, default=2, help="x0 preview after this many steps")
    ap.add_argument("--mode", choices=["batched_bo8", "sequential_bo8", "ade"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args.mode, args)))
        return
    print(json.dumps(measure(args.size, args.steps, args.preview_step), sort_keys=True))


if __name__ == "__main__":
    main()
