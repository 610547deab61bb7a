"""``make gpu-check``: its CPU-tiny run end to end (the CLI, as CI runs it), the full-size configs
(built on the meta device: the published parameter counts, no memory), and the runner's error lines."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from ade_train.bench import full_size
from ade_train.bench.gpu_check import TINY, Run

STEPS = ("env", "flux_build", "flux_attempt", "srm", "encode_once", "preview_prune", "parity", "offload",
         "qwen_build", "qwen_cfg")  # fmt: skip


def test_tiny_run_prints_a_line_per_step_and_a_passing_summary():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "ade_train.bench.gpu_check", "--tiny"],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    by_step = {line["step"]: line for line in lines}
    assert [line["step"] for line in lines] == [*STEPS, "summary"]
    assert all(line["mode"] == "cpu-tiny" for line in lines)
    summary = lines[-1]
    assert summary["checks"] == dict.fromkeys(STEPS, "pass") and summary["failed"] == []
    assert "not performance figures" in summary["note"]
    assert by_step["flux_attempt"]["nfe"] == TINY.steps and by_step["flux_attempt"]["finite"] is True
    assert by_step["srm"]["maps_captured"] == by_step["srm"]["expected_maps"] == 2  # 1 double block x 2 steps
    enc = by_step["encode_once"]
    assert enc["reused"]["calls"] == {"clip": 1, "t5": 1, "vae_encoder": 1}
    assert enc["reencoded"]["calls"] == {"clip": 4, "t5": 4, "vae_encoder": 4}
    pp = by_step["preview_prune"]
    assert pp["pruned"]["nfe"] == pp["preview_step"] and pp["x0_dtype"] == "float32" and pp["x0_finite"]
    assert by_step["parity"]["max_abs_diff"] <= 2
    off = by_step["offload"]
    assert (
        off["preview_keep"]["vae_hook_calls_in_loop"] == 0
        and off["preview_chain"]["vae_hook_calls_in_loop"] == 1
    )
    q = by_step["qwen_cfg"]
    assert q["full"]["nfe"] == 2 * TINY.qwen_steps and q["pruned"]["nfe"] == 2 * q["preview_step"]
    assert q["resolution"]["policy"] == "upstream" and q["true_cfg_scale"] == 4.0


# Published parameter counts (billions): FLUX.1 transformer 11.9, T5-XXL encoder 4.76, CLIP-L text 0.123,
# FLUX VAE 0.084; Qwen-Image transformer 20.4, Qwen2.5-VL-7B 8.29 (vision tower included), its VAE 0.127.
PUBLISHED = {
    "flux": {"transformer": 11.90, "text_encoder_2": 4.76, "text_encoder": 0.123, "vae": 0.084},
    "qwen": {"transformer": 20.43, "text_encoder": 8.29, "vae": 0.127},
}


@pytest.mark.parametrize("name", ["flux", "qwen"])
def test_full_size_configs_have_the_published_sizes(name):
    build = full_size.flux_kontext if name == "flux" else full_size.qwen_image_edit
    pipe, report = build("full", "meta", torch.bfloat16)  # the meta device allocates nothing
    for component, billions in PUBLISHED[name].items():
        n = sum(p.numel() for p in getattr(pipe, component).parameters()) / 1e9
        assert n == pytest.approx(billions, rel=0.01), component
        assert report[component]["gib"] == pytest.approx(n * 1e9 * 2 / 2**30, rel=0.01)  # bf16 bytes


def test_a_failing_step_prints_its_error_and_the_budget_skips_the_rest():
    out = io.StringIO()
    run = Run(TINY, budget_s=60.0, out=out)

    def broken():
        raise RuntimeError("CUDA out of memory")

    assert run.step("boom", broken) is None
    assert run.step("fine", lambda: ({"x": 1}, True)) == {"x": 1}
    run.budget_s = -1.0
    assert run.step("late", lambda: ({}, True)) is None
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["error"] == "RuntimeError: CUDA out of memory" and lines[1]["ok"] is True
    assert "time budget spent" in lines[2]["skipped"]
    assert run.checks == {"boom": "fail", "fine": "pass", "late": "skipped"}


def test_wheel_requirements_pin_the_libraries_but_not_torch():
    from ade_train.bench.gpu_check import wheel_requirements

    reqs = wheel_requirements()
    names = {r.split("==")[0] for r in reqs}
    assert {"diffusers", "transformers", "accelerate", "tokenizers", "safetensors"} <= names
    assert all("==" in r for r in reqs) and not any(n == "torch" or n.startswith("nvidia-") for n in names)
