"""GPU smoke test: FLUX.1 Kontext with real weights through ADE, one JSON line of facts.

    make gpu-smoke                       # or: python -m ade_train.bench.gpu_smoke [--model DIR_OR_ID]

On a CUDA host with the weights (about 4 minutes on one H100 at the defaults): loads FLUX.1 Kontext,
checks that the adapter's output equals a plain pipeline call on one image, runs ADE and Best-of-4 on
3 requests through ``AdaptiveEditor``, measures preview pruning on one request, and times one attempt
with and without SRM. Without a CUDA device it prints ``skipped: no CUDA device`` and exits 0.

The verifier is a deterministic stand-in (mean absolute change from the source), so the numbers are
mechanics (NFE, time, memory, calls saved), not edit quality; pass ``--predictors`` (a ``make train``
export) to run ADE with trained CARD / critique / calibration. ``--tiny`` (or ``ADE_GPU_SMOKE_TINY=1``)
runs the same code on the tiny in-code pipeline on CPU, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INSTRUCTIONS = ("make the sky red", "add a hat", "turn the car blue")
PARITY_TOLERANCE = 2  # 8-bit levels; GPU kernels may differ by a rounding step between two runs


def change_score(source, image, instruction: str = "") -> dict[str, float]:
    """Stand-in verifier: mean absolute pixel change from the source, in [0, 1]."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    b = np.asarray(source.convert("RGB").resize(image.size), dtype=np.float32)
    return {"change": float(np.abs(a - b).mean() / 255.0)}


def _images(size: int, n: int) -> list:
    from ade_train.bench.tiny_flux import test_image

    return [test_image(size, size, seed=i) for i in range(n)]


def _load(args) -> Any:
    from ade_runtime.backbones.flux_kontext import FluxKontextBackbone

    if args.tiny:
        from ade_train.bench.tiny_flux import tiny_kontext_pipeline

        kw = {"resolution": "input", "max_sequence_length": 32}
        return FluxKontextBackbone(tiny_kontext_pipeline(), num_inference_steps=args.steps, **kw)
    return FluxKontextBackbone.from_pretrained(
        args.model, device="cuda", torch_dtype="bfloat16", num_inference_steps=args.steps, resolution="input"
    )


def _parity(bb, image, seed: int) -> dict[str, Any]:
    """The adapter's image vs ``pipe(...)`` called plainly with the same seed and size."""
    import numpy as np
    import torch

    from ade_runtime.backbones.base import AttemptSpec, EditRequest

    prompt = INSTRUCTIONS[0]
    out = bb.run(bb.prepare(EditRequest(image, prompt)), AttemptSpec(0, 0, 0, prompt, seed=seed))
    w, h = bb.working_size(image.size)
    plain = bb.pipe(
        image=image, prompt=prompt, height=h, width=w, max_area=w * h, _auto_resize=False,
        num_inference_steps=bb.num_inference_steps, guidance_scale=bb.guidance_scale,
        max_sequence_length=bb.max_sequence_length, generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]  # fmt: skip
    diff = int(
        np.abs(np.asarray(out.image, np.int16) - np.asarray(plain.resize(out.image.size), np.int16)).max()
    )
    return {"max_abs_diff": diff, "ok": diff <= PARITY_TOLERANCE, "nfe": out.nfe}


def _full_calls(bb) -> int:
    return bb.num_inference_steps * (2 if bb._cfg else 1)


def _policy(bb, predictors, name: str, images) -> dict[str, Any]:
    """One policy on every request through the real loop: NFE, attempts, pruning, time per attempt."""
    from ade_runtime.backbones.base import EditRequest
    from ade_runtime.loop import AdaptiveEditor
    from ade_runtime.policy import PolicyConfig
    from ade_runtime.policy.config import preset

    base = predictors.policy or PolicyConfig()
    config = preset(name, base)
    if name == "ade":  # the same attempt cap as Best-of-4
        config = replace(config, max_candidates=min(config.max_candidates, 4), default_budget=4)
    editor = AdaptiveEditor(bb, predictors, policy=config, scorer=change_score, seed=0)
    nfe = attempts = pruned = saved = 0
    wall = 0.0
    for i, (image, text) in enumerate(zip(images, INSTRUCTIONS, strict=False)):
        t0 = time.perf_counter()
        result = editor.edit(EditRequest(image, text, id=f"smoke{i}"))
        wall += time.perf_counter() - t0
        outs = [a.output for a in result.attempts if a.output is not None]
        nfe += result.nfe
        attempts += len(outs)
        pruned += sum(o.pruned for o in outs)
        saved += sum(_full_calls(bb) - o.nfe for o in outs if o.pruned)
    return {
        "nfe": nfe,
        "attempts": attempts,
        "pruned": pruned,
        "transformer_calls_saved_by_pruning": saved,
        "wall_s_per_attempt": round(wall / max(attempts, 1), 4),
    }


def _pruning(bb, image, candidates: int = 4) -> dict[str, Any]:
    """Preview pruning on one request: prune below the median preview score of calibration seeds."""
    import numpy as np

    from ade_runtime.backbones.base import AttemptSpec, EditRequest

    text = INSTRUCTIONS[0]
    state = bb.prepare(EditRequest(image, text))
    k = bb.preview_step
    calib = [
        bb.run(
            state, AttemptSpec(0, 0, 0, text, seed=100 + s, preview_step=k, preview_fn=lambda im, _k: True)
        )
        for s in range(candidates)
    ]
    errors = [
        float(
            np.sqrt(
                np.mean(
                    ((np.asarray(o.preview_image, np.float32) - np.asarray(o.image, np.float32)) / 255) ** 2
                )
            )
        )
        for o in calib
    ]
    tau = float(np.median([change_score(image, o.preview_image)["change"] for o in calib]))
    outs = [
        bb.run(state, AttemptSpec(c, 0, 0, text, seed=c, preview_step=k,
                                  preview_fn=lambda im, _k: change_score(image, im)["change"] >= tau))
        for c in range(candidates)
    ]  # fmt: skip
    return {
        "preview_step": k,
        "pruned": sum(o.pruned for o in outs),
        "nfe": sum(o.nfe for o in outs),
        "transformer_calls_saved": sum(_full_calls(bb) - o.nfe for o in outs if o.pruned),
        "preview_x0_rms_vs_final": round(float(np.mean(errors)), 5),  # pixels in [0, 1]
    }


def _srm_overhead(bb, image) -> dict[str, Any]:
    from ade_runtime.backbones.base import AttemptSpec, EditRequest
    from ade_runtime.backbones.srm import SRMConfig

    text = INSTRUCTIONS[1]
    state = bb.prepare(EditRequest(image, text))
    spec = AttemptSpec(0, 0, 0, text, seed=7)
    t0 = time.perf_counter()
    bb.run(state, spec)
    plain = time.perf_counter() - t0
    bb.srm = SRMConfig()
    try:
        t0 = time.perf_counter()
        out = bb.run(state, spec)
        with_srm = time.perf_counter() - t0
    finally:
        bb.srm = None
    return {
        "plain_s": round(plain, 4),
        "srm_s": round(with_srm, 4),
        "overhead": round(with_srm / plain - 1.0, 4),
        "mask_fraction": round(float(out.attention_mask.mean()), 4)
        if out.attention_mask is not None
        else None,
    }


def smoke(args) -> dict[str, Any]:
    import torch

    from ade_runtime.predictors.bundle import Predictors

    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    bb = _load(args)
    load_s = time.perf_counter() - t0
    predictors = Predictors.load(args.predictors) if args.predictors else Predictors()
    images = _images(args.size, len(INSTRUCTIONS))
    t_all = time.perf_counter()
    report: dict[str, Any] = {
        "smoke": "gpu" if cuda else "tiny-cpu",
        "model": "tiny in-code FluxKontextPipeline" if args.tiny else args.model,
        "size": args.size,
        "steps": bb.num_inference_steps,
        "load_s": round(load_s, 2),
        "parity": _parity(bb, images[0], seed=1),
        "policies": {name: _policy(bb, predictors, name, images) for name in ("ade", "best_of_4")},
        "pruning": _pruning(bb, images[0]),
        "srm": _srm_overhead(bb, images[1]),
    }
    report["run_s"] = round(time.perf_counter() - t_all, 2)
    report["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu-smoke", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="black-forest-labs/FLUX.1-Kontext-dev", help="Hub id or local directory"
    )
    ap.add_argument(
        "--predictors", default=None, help="export directory of `make train` (default: fallbacks)"
    )
    ap.add_argument("--size", type=int, default=None, help="square input side (default 512; tiny: 32)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 28; tiny: 4)")
    ap.add_argument("--tiny", action="store_true", help="the tiny in-code pipeline on CPU (for tests)")
    args = ap.parse_args(argv)
    args.tiny = args.tiny or os.environ.get("ADE_GPU_SMOKE_TINY") == "1"
    args.size = args.size or (32 if args.tiny else 512)
    args.steps = args.steps or (4 if args.tiny else 28)
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("skipped: no CUDA device")
            return 0
    try:
        report = smoke(args)
    except Exception as exc:  # a smoke test reports its failure as one line, then fails
        hint = "without the weights on this machine, `make gpu-check` checks these code paths at full size"
        print(json.dumps({"smoke": "failed", "error": f"{type(exc).__name__}: {exc}", "hint": hint}))
        return 1
    print(json.dumps(report, sort_keys=True))
    return 0 if report["parity"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
