"""Reading an exported artifact back and verifying it (artifact format v1, ``artifacts.py``).

Everything that would silently change predictions is refused with an ``ArtifactError`` naming the
file and the fix: the header's format, version, kind and required keys (unknown top-level keys
only warn, for forward compatibility), the weights' sha256, anything that looks like a pickle
(never unpickled), the safetensors metadata, every tensor's shape and dtype, and the encoders the
features came from (peft/utils/save_and_load.py loads the same pair; docs/artifacts.md lists the
messages).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ade_runtime import __version__
from ade_runtime.errors import ArtifactError

ARTIFACT_FORMAT = "ade-artifact"
ARTIFACT_FORMAT_VERSION = 1

# Keys every v1 header has; anything else at the top level is from a newer writer and only warns.
REQUIRED_KEYS = ("format", "format_version", "kind", "class", "config", "tensors", "weights_sha256")
KNOWN_KEYS = frozenset(
    REQUIRED_KEYS
    + ("package", "package_version", "feature_spec", "data_fingerprint", "metrics", "weights_file")
)
# Any real safetensors header of ours is far below this; a larger length means "not safetensors".
_MAX_HEADER_BYTES = 100 << 20


def encoder_fingerprints_of(feature_spec: Mapping[str, Any] | None) -> dict[str, str]:
    """Role -> fingerprint from ``feature_spec["encoders"]`` (the convention save_artifact writes)."""
    encoders = (feature_spec or {}).get("encoders") or {}
    return {
        role: str(entry["fingerprint"] if isinstance(entry, Mapping) else entry)
        for role, entry in encoders.items()
        if isinstance(entry, str) or (isinstance(entry, Mapping) and "fingerprint" in entry)
    }


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def read_header(json_path: Path) -> tuple[dict[str, Any], bytes]:
    raw = read_bytes(json_path)
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


def check_header(meta: dict[str, Any], json_path: Path, kind: str | None, required_config_keys) -> None:
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


def read_weights(st_path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    blob = read_bytes(st_path)
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


def check_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any], st_path: Path) -> None:
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
