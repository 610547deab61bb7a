"""ade-serve's parts in process: the worker API on an internal error, hot swap, multipart parsing, CLI checks."""

from __future__ import annotations

import argparse
import base64
import json
import shutil

import numpy as np
import pytest
from fastapi import HTTPException
from helpers.predictors import calibrator, card

from ade_runtime.artifacts import atomic_export_dir
from ade_runtime.policy import PolicyConfig
from ade_runtime.serve import server
from ade_runtime.serve.api import EditAPI
from ade_runtime.serve.exports import ExportWatcher, export_fingerprint, load_strict
from ade_runtime.serve.gate import parse_multipart
from ade_runtime.testbed import World, save_png
from ade_runtime.testbed.imageio import make_image
from ade_runtime.traces import TraceDataset
from ade_runtime.traces.serving import FAILED_LOG


def write_export(d, bias=-1.0):
    card(levels=(1, 2)).save_pretrained(d)
    calibrator(bias, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)).save_pretrained(d)
    return d


@pytest.fixture()
def source(tmp_path):
    world = World(seed=3)
    r = world.sample_request(np.random.default_rng(0))
    save_png(make_image(r.source, r.source, world.size), tmp_path / "src.png")
    return (tmp_path / "src.png").read_bytes(), r.instruction


def api_for(tmp_path, export) -> EditAPI:
    args = server.build_parser().parse_args(
        ["--backbone", "testbed", "--predictors", str(export), "--allow-fallback"]
        + ["--trace-dir", str(tmp_path / "traces"), "--device", "cpu"]
    )
    api = EditAPI(args)
    api.setup("cpu")
    return api


class BrokenBackbone:
    name = "testbed:broken"
    supports_preview = supports_mask = supports_reasoning = False

    def prepare(self, request):
        raise RuntimeError("CUDA out of memory (simulated)")


def test_internal_error_is_a_500_with_request_id_recorded_in_the_trace(tmp_path, source):
    api = api_for(tmp_path, write_export(tmp_path / "export"))
    img, text = source
    payload = {"image": base64.b64encode(img).decode(), "instruction": text, "id": "boom"}
    ok = api.predict(api.decode_request({**payload, "id": "fine"}))
    assert ok["summary"]["id"] == "fine"
    api.backbone = BrokenBackbone()
    with pytest.raises(HTTPException) as exc:
        api.predict(api.decode_request(payload))
    assert exc.value.status_code == 500
    assert exc.value.detail["request_id"] == "boom" and "Traceback" not in json.dumps(exc.value.detail)
    lines = [json.loads(x) for x in (tmp_path / "traces" / FAILED_LOG).read_text().splitlines()]
    assert [x["id"] for x in lines] == ["boom"]
    meta = lines[0]["meta"]["ade"]
    assert "CUDA out of memory" in meta["error"] and meta["export"] == export_fingerprint(tmp_path / "export")
    assert meta["request_id"] == "boom"
    assert [r.id for r in TraceDataset(tmp_path / "traces")] == ["fine"]
    api.close()


def test_decode_request_maps_bad_input_to_its_status(tmp_path, source):
    api = api_for(tmp_path, write_export(tmp_path / "export"))
    img, text = source
    with pytest.raises(HTTPException) as exc:
        api.decode_request({"image": base64.b64encode(img).decode(), "instruction": ""})
    assert exc.value.status_code == 422 and "instruction is empty" in exc.value.detail
    api.close()


def test_watcher_swaps_a_good_export_and_refuses_a_corrupt_one(tmp_path):
    export = write_export(tmp_path / "export")
    w = ExportWatcher(export, loader=lambda d: load_strict(d, allow_fallback=True))  # no critique exported
    w.load()
    first = w.fingerprint
    assert w.check() is None  # nothing changed
    new = write_export(tmp_path / "new", bias=1.0)
    with atomic_export_dir(export) as tmp:
        for f in new.iterdir():
            shutil.copy2(f, tmp / f.name)
    event = w.check()
    assert event is not None and event[0] == "swapped" and w.fingerprint == event[1] != first
    good = w.predictors
    with atomic_export_dir(export) as tmp:
        for f in new.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "calibration.safetensors").write_bytes(b"\x00" * 10)
    event = w.check()
    assert event is not None and event[0] == "refused" and "calibration" in event[2]
    assert w.predictors is good and w.check() is None  # refused once, not reloaded on every request


def test_multipart_parser():
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nTurn it blue\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x00\xff\r\n--XyZ--\r\n"
    )
    out = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert out["instruction"] == "Turn it blue"
    assert out["image"] == b"\x89PNG\r\n\x00\xff"
    with pytest.raises(ValueError, match="boundary"):
        parse_multipart("multipart/form-data", body)


def test_cli_refuses_bad_options_with_exit_2(tmp_path, capsys):
    assert server.main(["--backbone", "testbed", "--predictors", str(tmp_path / "none")]) == 2
    assert "export directory not found" in capsys.readouterr().err
    export = write_export(tmp_path / "export")
    assert server.main(["--backbone", "testbed", "--predictors", str(export)]) == 2
    assert "critique.json: not exported" in capsys.readouterr().err  # strict unless --allow-fallback
    fb = ["--backbone", "testbed", "--predictors", str(export), "--allow-fallback", "--device", "cpu"]
    assert server.main([*fb, "--policy", "nope"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert server.main([*fb, "--host", "10.0.0.1"]) == 2
    assert "--host" in capsys.readouterr().err
    assert server.main([*fb, "--max-candidates", "0"]) == 2
    assert "--max-candidates 0: use an integer >= 1" in capsys.readouterr().err
    assert server.main([*fb, "--policy", "best_of_32"]) == 2  # the default policy must fit the limits
    assert "--max-candidates" in capsys.readouterr().err
    assert server.main([*fb, "--body-timeout", "0"]) == 2
    assert "--body-timeout" in capsys.readouterr().err
    assert isinstance(
        server.build_parser().parse_args(["--backbone", "testbed", "--predictors", "x"]), argparse.Namespace
    )


class CancelAfter:
    """The testbed backbone; the client 'disconnects' once ``n`` attempts have run."""

    def __init__(self, backbone, state, ticket, n):
        self.backbone, self.state, self.ticket, self.n, self.runs = backbone, state, ticket, n, 0

    def __getattr__(self, name):
        return getattr(self.backbone, name)

    def run(self, state, spec):
        out = self.backbone.run(state, spec)
        self.runs += 1
        if self.runs == self.n:
            self.state.cancel(self.ticket)
        return out


def test_a_disconnect_stops_a_running_request_before_its_next_attempt(tmp_path, source):
    api = api_for(tmp_path, write_export(tmp_path / "export"))
    img, text = source
    payload = {"image": base64.b64encode(img).decode(), "instruction": text, "policy": "best_of_8"}
    api.backbone = CancelAfter(api.backbone, api.state, ticket=7, n=2)
    with pytest.raises(HTTPException) as exc:
        api.predict(api.decode_request({**payload, "_ticket": 7}))
    assert exc.value.status_code == 499 and api.backbone.runs == 2  # 8 asked, 2 run
    with pytest.raises(HTTPException) as exc:  # already cancelled while queued: refused before any work
        api.decode_request({**payload, "_ticket": 7})
    assert exc.value.status_code == 499
    assert not list((tmp_path / "traces").glob("*.jsonl")) or not list(TraceDataset(tmp_path / "traces"))
    api.close()
