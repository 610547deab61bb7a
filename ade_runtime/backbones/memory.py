"""Will a pipeline fit its device? Weight bytes against free device memory, refused before an OOM.

A model larger than the card (FLUX.2-dev: about 32B transformer + 24B Mistral text encoder, ~112 GB
of bf16 weights) would otherwise fail deep inside ``pipe.to("cuda")`` with an out-of-memory error.
``check_fits`` refuses first, naming the GiB needed and free and the fix (``--cpu-offload``, which
needs only the largest component on the device at a time).

Weight bytes come from the safetensors headers of a local diffusers layout before anything is
loaded (``disk_component_bytes``: only the JSON header of each file is read), or from the loaded
modules (``module_component_bytes``) when the model is not a local directory.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from ade_runtime.errors import InputError

GIB = 2**30
# Activations, the VAE decode and the CUDA context need room beside the weights (FLUX.1 at 1024^2:
# a few GiB); a pipeline whose weights leave less than this free is refused.
DEFAULT_RESERVE_BYTES = 2 * GIB
# safetensors dtype names -> bytes per element (the format's own table).
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_NAMES = {"F16", "BF16", "F32", "F64"}


def _itemsize(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _dtype_for(component: str, dtype: Any) -> Any:
    """``dtype`` may be one torch dtype or diffusers' per-component dict (``{"default": ..., "vae": ...}``)."""
    if isinstance(dtype, dict):
        return dtype.get(component, dtype.get("default"))
    return dtype


def safetensors_bytes(path: str, dtype: Any = None) -> int:
    """Bytes the tensors of one ``.safetensors`` file take once loaded, floating ones cast to ``dtype``.

    Reads the file's 8-byte header length and JSON header only (the format: little-endian u64, JSON).
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    target = None if dtype is None else _itemsize(dtype)
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        numel = 1
        for d in info["shape"]:
            numel *= int(d)
        kind = info["dtype"]
        size = target if (target is not None and kind in FLOAT_NAMES) else SAFETENSORS_ITEMSIZE.get(kind, 4)
        total += numel * size
    return total


def disk_component_bytes(model_dir: str, dtype: Any = None) -> dict[str, int] | None:
    """Per-component weight bytes of a local diffusers layout (``model_index.json`` + subfolders),
    floating tensors counted in ``dtype``; None when ``model_dir`` is not such a directory."""
    index = os.path.join(model_dir, "model_index.json")
    if not os.path.isfile(index):
        return None
    with open(index, encoding="utf-8") as f:
        components = [k for k, v in json.load(f).items() if not k.startswith("_") and isinstance(v, list)]
    out: dict[str, int] = {}
    for name in components:
        folder = os.path.join(model_dir, name)
        if not os.path.isdir(folder):
            continue
        files = [f for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")]
        if files:
            out[name] = sum(
                safetensors_bytes(os.path.join(folder, f), _dtype_for(name, dtype)) for f in files
            )
    return out


def module_component_bytes(pipe: Any) -> dict[str, int]:
    """Per-component bytes of a loaded pipeline's parameters and buffers, in their current dtypes."""
    out: dict[str, int] = {}
    for name, module in getattr(pipe, "components", {}).items():
        if hasattr(module, "parameters") and hasattr(module, "buffers"):
            tensors = [*module.parameters(), *module.buffers()]
            out[name] = sum(t.numel() * t.element_size() for t in tensors)
    return out


def free_device_bytes(device: Any) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``); None for other devices."""
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(dev)[0])


def check_fits(
    component_bytes: dict[str, int],
    *,
    device: Any,
    what: str,
    cpu_offload: bool = False,
    free_bytes: int | None = None,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
) -> dict[str, float]:
    """Refuse with an ``InputError`` when the weights cannot sit on ``device``; returns the GiB figures.

    Without offload every component must fit at once; with ``cpu_offload`` only the largest one does
    (diffusers' model offload keeps one component on the device at a time). ``free_bytes`` overrides
    the device's free memory (tests pass a small number; None asks CUDA, and a non-CUDA device is not
    checked). ``reserve_bytes`` is kept free for activations.
    """
    free = free_device_bytes(device) if free_bytes is None else int(free_bytes)
    total = sum(component_bytes.values())
    largest_name, largest = max(component_bytes.items(), key=lambda kv: kv[1], default=("-", 0))
    needed = largest if cpu_offload else total
    figures = {
        "weights_gib": round(total / GIB, 2),
        "largest_component_gib": round(largest / GIB, 2),
        "needed_gib": round((needed + reserve_bytes) / GIB, 2),
        "free_gib": None if free is None else round(free / GIB, 2),
    }
    if free is None or needed + reserve_bytes <= free:
        return figures
    parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in sorted(component_bytes.items(), key=lambda kv: -kv[1]))
    head = (
        f"{what}: the weights need {total / GIB:.1f} GiB ({parts}) plus {reserve_bytes / GIB:.0f} GiB for "
        f"activations on {device}, but only {free / GIB:.1f} GiB is free"
    )
    if cpu_offload:
        raise InputError(
            f"{head}, even with --cpu-offload (its largest component, {largest_name}, needs "
            f"{(largest + reserve_bytes) / GIB:.1f} GiB); use a GPU with more memory or a quantized checkpoint"
        )
    fix = (
        f"use --cpu-offload (one component on the GPU at a time: {(largest + reserve_bytes) / GIB:.1f} GiB "
        f"for {largest_name})"
    )
    if largest + reserve_bytes > free:
        fix = "use a GPU with more memory or a quantized checkpoint (even its largest component does not fit)"
    raise InputError(f"{head}; {fix}")
