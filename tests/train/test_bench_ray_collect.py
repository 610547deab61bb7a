"""The ``ray_collect`` bench part at a tiny size: three runs side by side, identical datasets, the part
written where the report picks it up."""

from __future__ import annotations

import json

import pytest

from ade_train.bench import ray_collect
from ade_train.bench.parts import load_parts

pytest.importorskip("ray", reason="the ray extra (make install puts it in)")


def test_ray_collect_part_runs_small(tmp_path, capsys):
    rc = ray_collect.main(
        ["--out", str(tmp_path), "--requests", "3", "--grid=--candidates 1 --rounds 2 --reasoning 0"]
    )
    assert rc == 0
    (part,) = load_parts(tmp_path)
    fig = part["figures"]
    assert fig["identical"] is True and fig["requests"] == 3 and fig["attempts"] == 6
    for k in ("no_ray", "ray_1", "ray_2"):
        assert fig[f"{k}_s"] > 0 and fig[f"{k}_requests_per_s"] > 0
    assert fig["ray_2_vs_ray_1"] > 0 and "cluster figures would differ" in part["markdown"]
    assert "| --ray, 2 workers |" in part["markdown"]
    assert part["targets"][0]["met"] is True
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert json.loads(printed[-1]) == fig
