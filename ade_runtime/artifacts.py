"""Artifact format v1: one exported predictor = ``NAME.safetensors`` (weights) + ``NAME.json`` (structure).

Follows peft's ``adapter_model.safetensors`` + ``adapter_config.json`` pair (peft/utils/save_and_load.py,
peft/config.py): tensors only in safetensors, everything else in a JSON with sorted keys stamped with
the package version, the class name and a format version. Loading is forward compatible (unknown
top-level keys warn) and strict about everything that would silently change predictions: the sha256
of the weights, tensor shapes and dtypes, the artifact kind and the encoders the features came from.
Nothing is ever unpickled. See docs/artifacts.md for the layout, keys and error messages.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ade_runtime import __version__
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
ARTIFACT_FORMAT = "ade-artifact"
ARTIFACT_FORMAT_VERSION = 1

# Keys every v1 header has; anything else at the top level is from a newer writer and only warns.
REQUIRED_KEYS = ("format", "format_version", "kind", "class", "config", "tensors", "weights_sha256")
KNOWN_KEYS = frozenset(
    REQUIRED_KEYS
    + ("package", "package_version", "feature_spec", "data_fingerprint", "metrics", "weights_file")
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Any real safetensors header of ours is far below this; a larger length means "not safetensors".
_MAX_HEADER_BYTES = 100 << 20
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


def encoder_fingerprints_of(feature_spec: Mapping[str, Any] | None) -> dict[str, str]:
    """Role -> fingerprint from ``feature_spec["encoders"]`` (the convention save_artifact writes)."""
    encoders = (feature_spec or {}).get("encoders") or {}
    return {
        role: str(entry["fingerprint"] if isinstance(entry, Mapping) else entry)
        for role, entry in encoders.items()
        if isinstance(entry, str) or (isinstance(entry, Mapping) and "fingerprint" in entry)
    }


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
# load


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _read_header(json_path: Path) -> tuple[dict[str, Any], bytes]:
    raw = _read_bytes(json_path)
    if raw is None:
        raise ArtifactError(
            f"{json_path}: missing file; an artifact is NAME.json + NAME.safetensors written by save_artifact "
            "(check the export directory and the name)"
        )
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{json_path}: header not JSON ({exc}); re-export the artifact") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{json_path}: header not JSON object (got {type(meta).__name__}); re-export")
    return meta, raw


def _check_header(meta: dict[str, Any], json_path: Path, kind: str | None, required_config_keys) -> None:
    version = meta.get("format_version")
    if "format_version" in meta and (
        not isinstance(version, int) or isinstance(version, bool) or version > ARTIFACT_FORMAT_VERSION
    ):
        raise ArtifactError(
            f"{json_path}: wrong version: format_version {version!r}, this ade_runtime {__version__} reads "
            f"up to {ARTIFACT_FORMAT_VERSION}; upgrade ade-adaptive or re-export with this version"
        )
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise ArtifactError(
                f"{json_path}: missing key '{key}'; re-export the artifact with save_artifact"
            )
    if meta["format"] != ARTIFACT_FORMAT:
        raise ArtifactError(f"{json_path}: format is {meta['format']!r}, expected {ARTIFACT_FORMAT!r}")
    if version < 1:
        raise ArtifactError(f"{json_path}: wrong version: format_version {version!r} is not a valid version")
    if kind is not None and meta["kind"] != kind:
        raise ArtifactError(
            f"{json_path}: wrong kind: the file holds a {meta['kind']!r} artifact, expected {kind!r}; "
            "check the name passed to load_artifact"
        )
    if not isinstance(meta["config"], dict):
        raise ArtifactError(f"{json_path}: 'config' must be an object, got {type(meta['config']).__name__}")
    if not isinstance(meta["tensors"], dict):
        raise ArtifactError(f"{json_path}: 'tensors' must be an object, got {type(meta['tensors']).__name__}")
    for key in required_config_keys:
        if key not in meta["config"]:
            raise ArtifactError(
                f"{json_path}: missing key 'config.{key}'; the artifact was exported by an older or "
                "different trainer, re-export it"
            )
    unknown = sorted(set(meta) - KNOWN_KEYS)
    if unknown:
        warnings.warn(
            f"{json_path}: unknown top-level keys {unknown} (written by a newer ade?); ignoring them",
            stacklevel=3,
        )


def _read_weights(st_path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    blob = _read_bytes(st_path)
    if blob is None:
        raise ArtifactError(f"{st_path}: missing file; the JSON header has no weights beside it, re-export")
    if blob[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or blob[:4] == b"PK\x03\x04":
        raise ArtifactError(
            f"{st_path}: not a safetensors file (it looks like a pickle / torch.save archive); "
            "ade never unpickles, export weights with save_artifact"
        )
    header_len = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    parsable = 0 <= header_len <= min(len(blob) - 8, _MAX_HEADER_BYTES) and blob[8:9] == b"{"
    digest, expected = hashlib.sha256(blob).hexdigest(), str(meta["weights_sha256"])
    if digest != expected:
        why = (
            ": the weights are truncated, corrupted or were replaced after export; re-export"
            if parsable
            else " and not a valid safetensors file: truncated or corrupted; re-export"
        )
        raise ArtifactError(
            f"{st_path}: sha256 mismatch (file {digest[:16]}..., header {expected[:16]}...){why}"
        )
    if not parsable:
        raise ArtifactError(f"{st_path}: safetensors error: invalid header; re-export")
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(blob)
        st_meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{st_path}: safetensors error: {exc}; re-export") from None
    if st_meta.get("format") != ARTIFACT_FORMAT or st_meta.get("kind") != meta["kind"]:
        raise ArtifactError(
            f"{st_path}: safetensors metadata {st_meta} does not match the header (kind {meta['kind']!r}); "
            "the files come from different exports"
        )
    return tensors


def _check_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any], st_path: Path) -> None:
    declared = meta["tensors"]
    if set(declared) != set(tensors):
        missing = sorted(set(declared) - set(tensors))
        extra = sorted(set(tensors) - set(declared))
        raise ArtifactError(
            f"{st_path}: tensor mismatch: missing {missing}, unexpected {extra} compared with the JSON header"
        )
    for key, t in tensors.items():
        info = declared[key] if isinstance(declared[key], dict) else {}
        if list(t.shape) != info.get("shape"):
            raise ArtifactError(
                f"{st_path}: shape mismatch: tensor {key!r} is {list(t.shape)} in the safetensors file "
                f"but {info.get('shape')} in the JSON header; re-export"
            )
        if str(t.dtype).removeprefix("torch.") != info.get("dtype"):
            raise ArtifactError(
                f"{st_path}: dtype mismatch: tensor {key!r} is {t.dtype} in the safetensors file "
                f"but {info.get('dtype')} in the JSON header; re-export"
            )


def check_encoder_fingerprints(
    feature_spec: Mapping[str, Any] | None, expected: Mapping[str, str], where: str | os.PathLike
) -> None:
    """Raise ArtifactError unless every expected role's fingerprint equals the recorded one."""
    recorded = encoder_fingerprints_of(feature_spec)
    for role, fp in expected.items():
        fp = str(getattr(fp, "fingerprint", fp))
        if role not in recorded:
            raise ArtifactError(
                f"{where}: encoder mismatch: the artifact records no {role!r} encoder "
                f"(it has {sorted(recorded)}), you passed {fp}"
            )
        if recorded[role] != fp:
            raise ArtifactError(
                f"{where}: encoder mismatch: the artifact was trained with {role} encoder {recorded[role]}, "
                f"you passed {fp}; use the encoder from the artifact's feature_spec or retrain"
            )


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
        meta, raw = _read_header(json_path)
        _check_header(meta, json_path, kind, tuple(required_config_keys))
        try:
            tensors = _read_weights(st_path, meta)
            break
        except ArtifactError:
            # a concurrent re-export swapped the files between our two reads: read the new pair
            if attempt + 1 < _LOAD_ATTEMPTS and _read_bytes(json_path) != raw:
                continue
            raise
    _check_tensors(tensors, meta, st_path)
    feature_spec = meta.get("feature_spec")
    if encoder_fingerprints:
        check_encoder_fingerprints(feature_spec, encoder_fingerprints, json_path)
    return Artifact(
        meta=meta, config=meta["config"], tensors=tensors, feature_spec=feature_spec, path=json_path
    )
