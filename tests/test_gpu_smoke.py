"""``make gpu-smoke``: skips cleanly without CUDA; its code path runs on the tiny Kontext pipeline."""

from __future__ import annotations

import json

import torch

from ade_train.bench import gpu_smoke


def test_skips_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ADE_GPU_SMOKE_TINY", raising=False)
    assert gpu_smoke.main([]) == 0
    assert capsys.readouterr().out.strip() == "skipped: no CUDA device"


def test_tiny_run_reports_every_fact(monkeypatch, capsys):
    monkeypatch.setenv("ADE_GPU_SMOKE_TINY", "1")
    assert gpu_smoke.main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["smoke"] == "tiny-cpu" and report["parity"] == {"max_abs_diff": 0, "nfe": 4, "ok": True}
    for name in ("ade", "best_of_4"):
        p = report["policies"][name]
        assert p["attempts"] == 12 and p["nfe"] == 48 and p["wall_s_per_attempt"] > 0
    pr = report["pruning"]
    assert pr["pruned"] >= 1 and pr["transformer_calls_saved"] >= pr["pruned"]
    assert 0 <= pr["preview_x0_rms_vs_final"] < 1
    assert report["srm"]["mask_fraction"] is not None and report["srm"]["srm_s"] > 0
    assert "peak_gpu_mem_gib" in report and report["steps"] == 4
