"""The one base of every saved config (CARD, critique, calibration, policy) and the run-time options.

Follows peft's ``PeftConfig`` (peft/config.py): a dataclass per artifact, one-line help on every
field (``field(metadata={"help": ...})``), values checked in ``__post_init__``, and a forward
compatible ``from_dict``: unknown keys warn (a newer writer), a missing required key fails with a
message naming the key and the file. Run-time knobs (device, dtype) are never saved: they live in
``RuntimeOptions``, which ``Predictors.load`` and each ``from_pretrained`` honour.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ade_runtime.errors import ArtifactError, InputError


def config_field(help: str, **kw: Any) -> Any:
    """A dataclass field with its one-line help (peft-style ``metadata={"help": ...}``)."""
    return field(metadata={"help": help}, **kw)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


class ArtifactConfig:
    """Mixin of the saved configs (plain class, so frozen and mutable dataclasses can both use it)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (nested configs as dicts, tuples as lists)."""
        return _lists(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Field name -> its one-line help."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        """Fields without a default: a saved config must hold them."""
        return tuple(
            f.name
            for f in fields(cls)  # type: ignore[arg-type]
            if f.default is MISSING and f.default_factory is MISSING
        )

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], where: str = "config", *, error: type[Exception] = ArtifactError
    ):
        """Build from a saved dict; ``where`` names the file (or option) in every message.

        Unknown keys warn and are ignored; a missing required key or an invalid value raises
        ``error`` (ArtifactError for a saved file, InputError for a user's option).
        """
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise error(f"{where}: {name} must be a JSON object, got {type(data).__name__}; re-export it")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"{where}: unknown {name} keys {unknown} (written by a newer ade?); ignoring them",
                stacklevel=2,
            )
        for key in cls.required_keys():
            if key not in data:
                raise error(
                    f"{where}: missing key 'config.{key}'; the artifact was exported by an older or "
                    "different trainer, re-export it"
                )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise error(f"{where}: invalid {name}: {exc}; re-export it") from None


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how loaded predictors run; chosen per process and never saved in an artifact."""

    device: str = config_field("torch device the predictors' modules are moved to", default="cpu")
    dtype: str | None = config_field(
        "torch dtype of the predictors' weights (e.g. float32, bfloat16); None keeps the saved dtype",
        default=None,
    )

    def __post_init__(self) -> None:
        import torch

        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(
                f"RuntimeOptions.device={self.device!r}: {exc}; use e.g. cpu or cuda:0"
            ) from None
        if self.dtype is not None and not isinstance(getattr(torch, str(self.dtype), None), torch.dtype):
            raise InputError(f"RuntimeOptions.dtype={self.dtype!r}: use a torch dtype name such as float32")

    @property
    def torch_dtype(self):
        import torch

        return None if self.dtype is None else getattr(torch, self.dtype)

    def apply(self, module: Any) -> Any:
        """Move a torch module to this device (and dtype); returns it."""
        if module is None or not hasattr(module, "to"):
            return module
        module = module.to(self.device)
        if self.torch_dtype is not None:
            module = module.to(self.torch_dtype)
        return module
