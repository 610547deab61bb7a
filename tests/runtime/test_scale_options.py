"""The --ray options without a cluster: checked values, an unreachable address refused at once, and
the progress line."""

from __future__ import annotations

import io
import socket
from types import SimpleNamespace

import pytest

from ade_runtime.errors import InputError
from ade_runtime.scale.options import Progress, RayOptions, _check_reachable


def test_options_are_checked():
    for bad, field in [
        (dict(workers=0), "--workers"),
        (dict(gpus_per_worker=-1), "--gpus-per-worker"),
        (dict(cpus_per_worker=0), "--cpus-per-worker"),
        (dict(max_retries=-1), "--max-retries"),
    ]:
        with pytest.raises(InputError, match=field):
            RayOptions(**bad)


def test_workers_follow_the_clusters_gpus():
    def cluster(gpus):
        return SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": gpus})

    assert RayOptions().resolve(cluster(8)) == (8, 1.0)  # one worker per GPU
    assert RayOptions(gpus_per_worker=2).resolve(cluster(8)) == (4, 2)
    assert RayOptions().resolve(cluster(0)) == (1, 0.0)  # CPU only: one worker unless asked
    assert RayOptions(workers=3).resolve(cluster(0)) == (3, 0.0)
    with pytest.raises(InputError, match="the Ray cluster has 0 GPUs"):
        RayOptions(gpus_per_worker=1).resolve(cluster(0))


def test_an_address_nobody_listens_on_is_refused_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(InputError, match="nothing answers there"):
        _check_reachable(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(InputError, match="ray start --head"):
        _check_reachable(f"ray://127.0.0.1:{port}", timeout=5)
    _check_reachable("auto")  # left to Ray


def test_progress_line_has_rate_and_eta():
    out = io.StringIO()
    bar = Progress("ade-collect --ray", 4, every=0.0, stream=out)
    bar.update(1, 24)
    bar.update(3, 72)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ade-collect --ray: 1/4 requests (") and "attempts/s" in lines[0]
    assert "ETA" in lines[0] and lines[-1].startswith("ade-collect --ray: 4/4 requests")
    assert len(bar.stamps) == 2
