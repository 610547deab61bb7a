"""ade-serve's traces stay intact (issue #24, item 2): a real server (subprocess, 127.0.0.1, testbed
backbone), restarted on the same --trace-dir, and one with two workers writing one dataset."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import REPO
from helpers.predictors import calibrator, card

from ade_runtime.policy import PolicyConfig
from ade_runtime.testbed import World, save_png
from ade_runtime.testbed.imageio import make_image

STARTUP_S = 120
EXE = Path(sys.executable).with_name("ade-traces")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-traces")
    export = d / "export"
    card(levels=(1, 2, 4)).save_pretrained(export)
    calibrator(-1.0, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)).save_pretrained(export)
    world = World(seed=11)
    images = []
    for i in range(2):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), d / f"{i}.png")
        images.append(((d / f"{i}.png").read_bytes(), r.instruction))
    return export, images


class Server:
    def __init__(self, export: Path, traces: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
        self.log_path = traces.parent / f"server-{self.url.rsplit(':', 1)[1]}.log"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ade_runtime.serve.server", "--backbone", "testbed"]
                + ["--predictors", str(export), "--allow-fallback", "--trace-dir", str(traces)]
                + ["--port", self.url.rsplit(":", 1)[1], *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=traces.parent,
            )
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError("server not ready in time:\n" + self.output())

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def body(image: bytes, instruction: str, **fields) -> dict:
    return {"image": base64.b64encode(image).decode(), "instruction": instruction, **fields}


def validate_decode(root: Path) -> dict:
    res = subprocess.run(
        [str(EXE), "validate", str(root), "--decode", "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode in (0, 1), res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def image_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "images").rglob("*") if p.is_file()
    }


def test_id_reuse_after_a_restart_gets_409_and_bad_fields_leave_no_trace(setup, tmp_path):
    export, images = setup
    traces = tmp_path / "traces"
    server = Server(export, traces)
    try:
        r = httpx.post(server.url + "/edit", json=body(*images[0], id="keep"), timeout=120)
        assert r.status_code == 200, r.text
    finally:
        assert server.stop() == 0, server.output()
    before = image_files(traces)
    assert "images/keep/source.png" in before
    server = Server(export, traces)  # restarted: a new process, a new writer
    try:
        r = httpx.post(server.url + "/edit", json=body(*images[1], id="keep"), timeout=120)
        assert r.status_code == 409 and "already used" in r.json()["detail"], r.text
        raw = json.dumps(body(*images[1], id="sur", category="x")).replace('"x"', '"bad \\ud800"')
        r = httpx.post(
            server.url + "/edit", content=raw, headers={"content-type": "application/json"}, timeout=120
        )
        assert 400 <= r.status_code < 500 and "category" in r.text, r.text
        r = httpx.post(server.url + "/edit", json=body(*images[1], id="fresh"), timeout=120)
        assert r.status_code == 200, r.text
    finally:
        assert server.stop() == 0, server.output()
    after = image_files(traces)
    assert {k: after[k] for k in before} == before  # the first record's images untouched
    assert not any(k.startswith("images/sur") for k in after)  # nothing of the refused request
    summary = validate_decode(traces)
    assert (summary["valid"], summary["rejected"]) == (2, 0), summary


def test_two_workers_one_dataset_one_id_written_once(setup, tmp_path):
    export, images = setup
    traces = tmp_path / "traces"
    server = Server(export, traces, "--workers-per-device", "2")
    try:

        async def both():
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(
                    *(
                        client.post(server.url + "/edit", json=body(*images[i % 2], id="twin"))
                        for i in range(4)
                    )
                )

        codes = sorted(r.status_code for r in asyncio.run(both()))
        assert codes == [200, 409, 409, 409], codes
    finally:
        assert server.stop() == 0, server.output()
    summary = validate_decode(traces)
    assert (summary["valid"], summary["rejected"]) == (1, 0), summary
