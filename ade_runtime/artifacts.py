"""Artifact format v1: one exported predictor = ``NAME.safetensors`` (weights) + ``NAME.json`` (structure).

Follows peft's ``adapter_model.safetensors`` + ``adapter_config.json`` pair (peft/utils/save_and_load.py,
peft/config.py): tensors only in safetensors, everything else in a JSON with sorted keys stamped with
the package version, the class name and a format version. Loading is forward compatible (unknown
top-level keys warn) and strict about everything that would silently change predictions: the sha256
of the weights, tensor shapes and dtypes, the artifact kind and the encoders the features came from.
Nothing is ever unpickled. See docs/artifacts.md for the layout, keys and error messages; the checks
a load runs are in ``artifact_checks.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ade_runtime import __version__
from ade_runtime.artifact_checks import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMAT_VERSION,
    check_encoder_fingerprints,
    check_header,
    check_tensors,
    encoder_fingerprints_of,
    read_bytes,
    read_header,
    read_weights,
)
from ade_runtime.errors import ArtifactError
from ade_runtime.files import (  # noqa: F401  (re-exported: the historical home of these helpers)
    _tmp_sibling,
    atomic_export_dir,
    atomic_write_bytes,
    fingerprint_files,
    fingerprint_records,
)

# File names and artifact kinds, defined once (the kind is stamped in the JSON and the safetensors).
CARD_NAME = CARD_KIND = "card"
CRITIQUE_NAME = CRITIQUE_KIND = "critique"
CALIBRATION_NAME = CALIBRATION_KIND = "calibration"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Re-reads when the JSON changed under us (a concurrent export), before a mismatch is reported.
_LOAD_ATTEMPTS = 3


@dataclass
class Artifact:
    """A loaded artifact: the JSON header, its config, the tensors and the feature spec."""

    meta: dict[str, Any]
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    feature_spec: dict[str, Any] | None = None
    path: Path = field(default_factory=Path)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def encoder_fingerprints(self) -> dict[str, str]:
        """Role -> fingerprint of the encoders recorded in the feature spec (empty when none)."""
        return encoder_fingerprints_of(self.feature_spec)


# --------------------------------------------------------------------------------------------------
def encoder_entry(encoder: Any) -> dict[str, Any]:
    """The feature-spec entry of an encoder: its rebuildable spec and its fingerprint."""
    return {"fingerprint": str(encoder.fingerprint), "spec": encoder.spec()}


# --------------------------------------------------------------------------------------------------
# save


def _jsonable(value: Any, where: str, file: Path) -> Any:
    """Plain-JSON copy of ``value`` (tuples -> lists, numpy/torch scalars -> numbers); NaN refused."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ArtifactError(f"{file}: {where} has a non-string key {k!r}; JSON keys must be strings")
            out[k] = _jsonable(v, f"{where}.{k}", file)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]", file) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ArtifactError(f"{file}: {where} is {value}; store finite numbers (or null) in artifacts")
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return _jsonable(value.item(), where, file)
    raise ArtifactError(
        f"{file}: {where} has type {type(value).__name__}, which is not JSON; store tensors in `tensors`"
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ArtifactError(f"artifact name {name!r} is invalid; use letters, digits, '_', '-', '.'")


def _normalise_feature_spec(feature_spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Encoder objects under ``feature_spec["encoders"]`` become {"fingerprint", "spec"} entries."""
    if feature_spec is None:
        return None
    spec = dict(feature_spec)
    if spec.get("encoders") is not None:
        spec["encoders"] = {
            role: encoder_entry(enc) if hasattr(enc, "spec") and hasattr(enc, "fingerprint") else enc
            for role, enc in dict(spec["encoders"]).items()
        }
    return spec


def _sorted_metadata(blob: bytes) -> bytes:
    """Rewrite the safetensors header with ``__metadata__`` keys sorted (same length, same offsets).

    safetensors serialises metadata from a Rust HashMap, so its order (and thus the file's sha256)
    changes from run to run; sorting makes re-exports of the same weights byte-identical.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    if meta is None:
        return blob
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"))
    raw = text.encode("utf-8")
    if len(raw) > n:
        return blob
    return blob[:8] + raw + b" " * (n - len(raw)) + blob[8 + n :]


def save_artifact(
    directory: str | os.PathLike,
    name: str,
    *,
    kind: str,
    class_name: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    feature_spec: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``NAME.safetensors`` then ``NAME.json`` into ``directory``; returns the JSON path.

    ``feature_spec["encoders"]`` may map a role ("text", "image", ...) to an encoder object; it is
    stored as ``{"fingerprint", "spec"}`` so that loading can check and rebuild the encoder.
    """
    directory = Path(directory)
    _check_name(name)
    json_path = directory / f"{name}.json"
    st_path = directory / f"{name}.safetensors"
    if not isinstance(kind, str) or not kind:
        raise ArtifactError(f"{json_path}: kind must be a non-empty string such as 'card', got {kind!r}")
    if not isinstance(class_name, str) or not class_name:
        raise ArtifactError(f"{json_path}: class_name must be a non-empty string, got {class_name!r}")
    if not isinstance(config, Mapping):
        raise ArtifactError(f"{json_path}: config must be a dict, got {type(config).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not isinstance(key, str) or not key or key == "__metadata__":
            raise ArtifactError(
                f"{st_path}: tensor names must be non-empty strings other than '__metadata__', got {key!r}"
            )
        if not isinstance(t, torch.Tensor):
            raise ArtifactError(f"{st_path}: tensors[{key!r}] is a {type(t).__name__}, not a torch.Tensor")
        # clone: safetensors refuses tensors sharing storage (tied weights) and non-contiguous views.
        flat[key] = t.detach().to("cpu").contiguous().clone()
    header: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "kind": kind,
        "class": class_name,
        "package": "ade_runtime",
        "package_version": __version__,
        "config": _jsonable(config, "config", json_path),
        "feature_spec": _jsonable(_normalise_feature_spec(feature_spec), "feature_spec", json_path),
        "data_fingerprint": data_fingerprint,
        "metrics": _jsonable(metrics, "metrics", json_path) if metrics is not None else None,
        "tensors": {
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in flat.items()
        },
        "weights_file": st_path.name,
    }
    from safetensors.torch import save as st_save

    blob = st_save(
        flat,
        metadata={"format": ARTIFACT_FORMAT, "format_version": str(ARTIFACT_FORMAT_VERSION), "kind": kind},
    )
    blob = _sorted_metadata(blob)
    header["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    text = json.dumps(header, sort_keys=True, indent=2, allow_nan=False) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(st_path, blob)
    # JSON last: a header on disk always describes complete weights.
    atomic_write_bytes(json_path, text.encode("utf-8"))
    return json_path


# --------------------------------------------------------------------------------------------------
# load (the checks are in artifact_checks.py)


def load_artifact(
    directory: str | os.PathLike,
    name: str,
    *,
    kind: str | None = None,
    required_config_keys: Iterable[str] = (),
    encoder_fingerprints: Mapping[str, str] | None = None,
) -> Artifact:
    """Load and verify ``NAME.json`` + ``NAME.safetensors``; every failure is an ArtifactError.

    ``encoder_fingerprints`` maps a role to the fingerprint (or encoder) the caller will use;
    it must equal what the artifact was trained with.
    """
    directory = Path(directory)
    _check_name(name)
    json_path = directory / f"{name}.json"
    st_path = directory / f"{name}.safetensors"
    for attempt in range(_LOAD_ATTEMPTS):
        meta, raw = read_header(json_path)
        check_header(meta, json_path, kind, tuple(required_config_keys))
        try:
            tensors = read_weights(st_path, meta)
            break
        except ArtifactError:
            # a concurrent re-export swapped the files between our two reads: read the new pair
            if attempt + 1 < _LOAD_ATTEMPTS and read_bytes(json_path) != raw:
                continue
            raise
    check_tensors(tensors, meta, st_path)
    feature_spec = meta.get("feature_spec")
    if encoder_fingerprints:
        check_encoder_fingerprints(feature_spec, encoder_fingerprints, json_path)
    return Artifact(
        meta=meta, config=meta["config"], tensors=tensors, feature_spec=feature_spec, path=json_path
    )
