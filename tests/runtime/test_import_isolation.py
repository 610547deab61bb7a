"""The runtime never imports the training stack: every ade_runtime module imports in a fresh interpreter
(optional backbone libraries deferred) and neither Lightning, W&B, scikit-learn nor ade_train loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FORBIDDEN = ("lightning", "pytorch_lightning", "lightning_fabric", "wandb", "sklearn", "ade_train")
# house rule: backbone libraries load lazily, inside the adapters' and encoders' functions; Ray only on the --ray path
LAZY = ("transformers", "diffusers", "tokenizers", "accelerate", "ray")
# the server's libraries (the `serve` extra) load only inside ade_runtime.serve's server modules
SERVE_LIBS = ("litserve", "fastapi", "uvicorn", "starlette", "prometheus_client")

_SCRIPT = r"""
import importlib, json, pkgutil, sys, tempfile, traceback
FORBIDDEN, LAZY, SERVE_LIBS = %r, %r, %r

def forbidden(names=FORBIDDEN):
    return sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in names})

import ade_runtime
import torch
report = {"modules": [], "failed": {}, "culprits": {}}
names = ["ade_runtime"] + sorted(
    m.name for m in pkgutil.walk_packages(ade_runtime.__path__, "ade_runtime.")
)
# the server's modules last, so that everything before them is checked for the server's libraries
names.sort(key=lambda n: n.startswith(("ade_runtime.serve.api", "ade_runtime.serve.server", "ade_runtime.serve.metrics")))
serve_libs_early = None
for name in names:
    if serve_libs_early is None and name.startswith(("ade_runtime.serve.api", "ade_runtime.serve.server", "ade_runtime.serve.metrics")):
        serve_libs_early = forbidden(SERVE_LIBS)
    before = set(forbidden())
    try:
        importlib.import_module(name)
        report["modules"].append(name)
    except BaseException as exc:  # SystemExit or ImportError alike: reported, never skipped
        report["failed"][name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    new = sorted(set(forbidden()) - before)
    if new:
        report["culprits"][name] = new

from ade_runtime.artifacts import CARD_NAME, load_artifact, save_artifact
from ade_runtime.encoders import HashingTextEncoder
with tempfile.TemporaryDirectory() as d:
    enc = HashingTextEncoder(dim=16)
    save_artifact(d, CARD_NAME, kind="card", class_name="CardPredictor", config={"h": 1},
                  tensors={"w": torch.ones(2, 2)}, feature_spec={"encoders": {"text": enc}})
    art = load_artifact(d, CARD_NAME, kind="card", encoder_fingerprints={"text": enc.fingerprint})
    report["artifact_ok"] = bool(torch.equal(art.tensors["w"], torch.ones(2, 2)))
report["forbidden"] = forbidden()
report["eager_backbone_libs"] = forbidden(LAZY)
report["serve_libs_early"] = serve_libs_early
print(json.dumps(report))
"""


def test_runtime_never_imports_the_training_stack():
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT % (FORBIDDEN, LAZY, SERVE_LIBS)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, "ade_runtime modules that do not import:\n" + "\n".join(
        f"  {k}: {v}" for k, v in report["failed"].items()
    )
    assert report["culprits"] == {}, f"ade_runtime modules importing the training stack: {report['culprits']}"
    assert report["forbidden"] == []
    assert report["artifact_ok"] is True
    assert report["eager_backbone_libs"] == [], (
        "imported at module level somewhere in ade_runtime (must be lazy)"
    )
    assert report["serve_libs_early"] == [], (
        "the server's libraries are imported outside ade_runtime.serve.{api,server,metrics}"
    )
    # the walk really covered the package, including the artifact, encoder and server modules
    for name in (
        "ade_runtime.artifacts",
        "ade_runtime.encoders.cache",
        "ade_runtime.encoders.hf_text",
        "ade_runtime.serve.inputs",
        "ade_runtime.serve.server",
    ):
        assert name in report["modules"]
