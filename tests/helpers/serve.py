"""A real ``ade-serve`` for tests: a subprocess on 127.0.0.1 (testbed backbone), and request builders."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ade_runtime.policy import PolicyConfig
from ade_runtime.testbed import World, save_png
from ade_runtime.testbed.imageio import make_image
from helpers import REPO
from helpers.predictors import calibrator, card

ROOT = REPO  # the repository root
STARTUP_S = 120


def write_export(d: Path, bias: float = -1.0) -> Path:
    card(levels=(1, 2, 4)).save_pretrained(d)
    calibrator(bias, 6.0, PolicyConfig(tau_high=0.8, tau_low=0.1, s_max=2)).save_pretrained(d)
    return d


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_sources(d: Path) -> list[tuple[bytes, str]]:
    """Eight testbed source images (PNG bytes) with their instructions, written under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    world = World(seed=11)
    out = []
    for i in range(8):
        r = world.sample_request(np.random.default_rng(i))
        save_png(make_image(r.source, r.source, world.size), d / f"{i}.png")  # keeps the testbed chunk
        out.append(((d / f"{i}.png").read_bytes(), r.instruction))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, export: Path, traces: Path, *extra: str, port: int | None = None, env=None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.traces = traces
        self.signalled = False
        self.log = open(traces.parent / f"server-{self.port}.log", "wb")
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            **(env or {}),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ade_runtime.serve.server", "--backbone", "testbed"]
            + ["--predictors", str(export), "--allow-fallback"]  # the test exports have no critique
            + ["--trace-dir", str(traces), "--port", str(self.port), *extra],
            stdout=self.log,
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
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        self.signalled = True
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.proc.poll() is None:
            if not self.signalled:  # a second SIGTERM during interpreter exit would kill it
                self.terminate()
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def multipart(image: bytes, instruction: str, **fields) -> dict:
    return {
        "files": {"image": ("src.png", image, "image/png")},
        "data": {"instruction": instruction, **fields},
    }


def as_json(image: bytes, instruction: str, **fields) -> dict:
    return {"json": {"image": base64.b64encode(image).decode(), "instruction": instruction, **fields}}
