"""Export trained predictors into one directory a production runtime loads, atomically and merged.

Every trainer (``ade-train card``, ``critique``, ``calibrate``) exports into ``OUT/export``:
the artifacts (``NAME.safetensors`` + ``NAME.json``, see ``ade_runtime.artifacts``), a manifest
``export.json`` (one section per predictor: data fingerprint, data source, metrics, encoders,
intended use) and a model card ``README.md`` rendered from the manifest (after Hugging Face model
cards). An export keeps the predictors already in the directory (train-card then train-critique
into the same OUT ships both) and goes through ``atomic_export_dir``: a reader sees the complete
old or the complete new directory, never a half-written one.

Public API::

    section = PredictorSection(name=CARD_NAME, title="CARD budget predictor", data=DataInfo(...),
                               metrics={...}, encoders={...}, intended_use="...")
    export_dir = export_predictors(out_dir, [(section, lambda d: card.save_pretrained(d))])
    read_manifest(export_dir) -> dict
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ade_runtime import __version__
from ade_runtime.artifacts import atomic_export_dir, atomic_write_bytes
from ade_runtime.traces.records import EditRecord

EXPORT_SUBDIR = "export"
MANIFEST = "export.json"
MODEL_CARD = "README.md"
MANIFEST_FORMAT = "ade-export/1"
DATA_SOURCES = ("testbed", "real")
# meta keys a generator uses to say where records come from; a value naming the testbed marks it synthetic
_SOURCE_KEYS = ("source", "generator", "domain", "dataset", "synthetic")


def data_source(records: Iterable[EditRecord]) -> str:
    """``"testbed"`` when the records' meta says they come from the synthetic testbed, else ``"real"``."""
    for rec in records:
        for key in _SOURCE_KEYS:
            value = rec.meta.get(key)
            if value is True and key == "synthetic":
                return "testbed"
            if isinstance(value, str) and "testbed" in value.lower():
                return "testbed"
        if any("testbed" in str(k).lower() for k in rec.meta):
            return "testbed"
    return "real"


@dataclass
class DataInfo:
    """What a predictor was trained on."""

    path: str  # the trace dataset directory
    fingerprint: str  # ade_runtime.artifacts.fingerprint_records of the training ids (or of the files)
    source: str  # "testbed" (synthetic, known ground truth) or "real"
    n_records: int  # valid records used (all splits)
    n_rejected: int = 0  # lines the reader rejected
    splits: dict[str, int] = field(default_factory=dict)  # split name -> number of requests
    backbones: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ValueError(f"DataInfo.source must be one of {DATA_SOURCES}, got {self.source!r}")
        if self.n_records < 0 or self.n_rejected < 0:
            raise ValueError("DataInfo.n_records and n_rejected must be >= 0")


@dataclass
class PredictorSection:
    """One predictor's entry in the manifest and the model card."""

    name: str  # artifact name (CARD_NAME, CRITIQUE_NAME, CALIBRATION_NAME)
    title: str  # one-line human title
    data: DataInfo
    metrics: dict[str, float] = field(default_factory=dict)  # test-split metrics, shown in the card
    encoders: dict[str, str] = field(default_factory=dict)  # role -> "kind (fingerprint)"
    intended_use: str = ""
    limitations: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (config, seed)
    warnings: list[str] = field(default_factory=list)  # weak-model findings, shown first in the card

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(
                f"PredictorSection.name must be an artifact name such as 'card', got {self.name!r}"
            )
        if not self.title:
            raise ValueError(f"PredictorSection.title is empty for {self.name!r}; give a one-line title")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = {k: _finite(v) for k, v in self.metrics.items()}
        out["exported_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out["package_version"] = __version__
        return out


def _finite(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else None


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The manifest of an export directory (``{"format", "predictors": {name: section}}``); empty if none."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "predictors": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: unreadable export manifest ({exc}); delete the export and re-export"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("predictors"), dict):
        raise ValueError(f"{path}: field 'predictors' missing; delete the export directory and re-export")
    return data


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def render_model_card(manifest: Mapping[str, Any]) -> str:
    """The README.md of an export directory, one section per predictor."""
    preds = manifest.get("predictors", {})
    lines = [
        "# ADE exported predictors",
        "",
        "Load with `ade_runtime.predictors` (`CardPredictor.from_pretrained(dir)`, ...); only torch and",
        "safetensors are needed at run time. Files: "
        + ", ".join(f"`{n}.json` + `{n}.safetensors`" for n in preds),
        "",
    ]
    for name, sec in sorted(preds.items()):
        data = sec.get("data", {})
        source = data.get("source", "real")
        lines += [f"## {sec.get('title', name)} (`{name}`)", ""]
        if source == "testbed":
            lines += [
                "> Trained on the **synthetic testbed** (CPU edit world with known ground truth), not on a",
                "> real backbone's traces: use it to test the pipeline, retrain on real traces to deploy.",
                "",
            ]
        lines += [f"> **Warning:** {w}" for w in sec.get("warnings", [])]
        if sec.get("warnings"):
            lines.append("")
        lines += [
            f"- data: `{data.get('path')}` ({source}), {data.get('n_records')} requests, "
            f"{data.get('n_rejected', 0)} rejected lines; splits {data.get('splits', {})}",
            f"- data fingerprint: `{data.get('fingerprint')}`",
            f"- backbones: {', '.join(data.get('backbones', [])) or 'n/a'}; "
            f"categories: {', '.join(data.get('categories', [])) or 'n/a'}",
            "- encoders: " + (", ".join(f"{k}: `{v}`" for k, v in sec.get("encoders", {}).items()) or "none"),
            f"- exported {sec.get('exported_at')} by ade {sec.get('package_version')}",
            "",
        ]
        if sec.get("intended_use"):
            lines += ["Intended use: " + sec["intended_use"], ""]
        if sec.get("limitations"):
            lines += ["Limitations: " + sec["limitations"], ""]
        metrics = sec.get("metrics", {})
        if metrics:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
            lines.append("")
    return "\n".join(lines)


def export_predictors(
    out_dir: str | Path,
    entries: Sequence[tuple[PredictorSection, Callable[[Path], Any]]],
    *,
    subdir: str = EXPORT_SUBDIR,
) -> Path:
    """Write predictors into ``OUT/export`` atomically, keeping the ones already exported there.

    ``entries`` pairs each predictor's manifest section with a writer ``fn(directory)`` that saves
    its artifact files (e.g. ``card.save_pretrained``). Returns the export directory.
    """
    if not entries:
        raise ValueError("export_predictors: nothing to export (entries is empty)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / subdir
    # one exporter at a time per OUT, so two trainers finishing together cannot drop each other's files
    with open(out / f".{subdir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(final)
        names = {sec.name for sec, _ in entries}
        with atomic_export_dir(final) as tmp:
            if final.is_dir():
                for item in final.iterdir():
                    if item.name in (MANIFEST, MODEL_CARD) or item.name.split(".")[0] in names:
                        continue
                    dst = tmp / item.name
                    shutil.copytree(item, dst) if item.is_dir() else shutil.copy2(item, dst)
            for sec, write in entries:
                write(tmp)
                missing = [
                    f"{sec.name}{s}"
                    for s in (".json", ".safetensors")
                    if not (tmp / f"{sec.name}{s}").is_file()
                ]
                if missing:
                    raise RuntimeError(
                        f"export of {sec.name!r}: the writer did not produce {', '.join(missing)}"
                    )
                manifest["predictors"][sec.name] = sec.to_json()
            manifest["format"] = MANIFEST_FORMAT
            text = json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n"
            atomic_write_bytes(tmp / MANIFEST, text.encode("utf-8"))
            atomic_write_bytes(tmp / MODEL_CARD, render_model_card(manifest).encode("utf-8"))
        os.utime(final)
    return final
