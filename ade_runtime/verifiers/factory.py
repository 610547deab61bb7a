"""``load_verifier(spec)``: an expensive verifier from one string, as ``--verifier SPEC`` gives it.

Specs: ``vlm:<hub id or local path>`` (VIEScore on Qwen2-VL / Qwen2.5-VL, ``qwen.py``),
``openai:<model>`` (any OpenAI-compatible endpoint, ``http.py``; needs ``base_url``),
``editscore:<EditScore weights, id or path>`` (the ``editscore`` package, ``editscore.py``),
``emulated`` (the testbed's emulated reward model, ``ade_runtime.testbed.reward``). Heavy
libraries load only when their spec is built.
"""

from __future__ import annotations

import math
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.verifiers.base import Verifier, VerifierCost

SPEC_FORMS = ("vlm:<hub id or local path>", "openai:<model>", "editscore:<id or path>", "emulated")


def modelled_cost(seconds: float | None, flops: float | None = None) -> VerifierCost | None:
    """The modelled cost per call that replaces the measured one, or None to measure each call."""
    if seconds is None and flops is None:
        return None
    if seconds is not None and not (
        isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0
    ):
        raise InputError(f"verifier seconds per call must be a finite number >= 0, got {seconds!r}")
    return VerifierCost(
        seconds=float(seconds or 0.0), flops=flops, source="modelled: given per call, not measured"
    )


class CostMeter:
    """What an expensive verifier charges per call: the modelled cost when one is given, else the
    measured wall time; ``cost`` is then the running mean of the measured calls (0 before the first),
    so a caller can price the next call."""

    def __init__(self, modelled: VerifierCost | None = None) -> None:
        self.modelled = modelled is not None
        self.cost = modelled or VerifierCost(source="measured: no call yet")
        self.calls, self._total = 0, 0.0

    def charge(self, measured_seconds: float, calls: int = 1) -> float:
        """Seconds to charge for one call whose wall time was ``measured_seconds`` (``calls`` calls
        when one measurement covers a batch: each is charged its share)."""
        if self.modelled:
            return self.cost.seconds
        share = max(0.0, float(measured_seconds)) / calls
        self.calls += calls
        self._total += share * calls
        self.cost = VerifierCost(
            seconds=self._total / self.calls, source=f"measured: mean wall time of {self.calls} call(s)"
        )
        return share


class Metered:
    """Base of the expensive verifiers: ``cost`` and ``modelled`` read the verifier's ``meter``."""

    meter: CostMeter

    @property
    def cost(self) -> VerifierCost:
        return self.meter.cost

    @property
    def modelled(self) -> bool:
        return self.meter.modelled


def check_spec(spec: str) -> None:
    """Refuse a malformed spec (one line) without loading anything."""
    kind, sep, arg = (spec or "").strip().partition(":")
    kind, arg = kind.lower(), arg.strip()
    if (kind in ("vlm", "openai", "editscore") and arg) or (kind == "emulated" and not sep):
        return
    raise InputError(f"--verifier {spec!r} is not a verifier spec; use one of: {', '.join(SPEC_FORMS)}")


def load_verifier(
    spec: str,
    *,
    base_url: str | None = None,
    seconds: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    **opts: Any,
) -> Verifier:
    """The verifier ``spec`` names. ``seconds``: a modelled cost per call (default: measured); ``base_url`` only for ``openai:``; ``device`` / ``dtype`` for ``vlm:`` (ignored
    elsewhere); other options go to the verifier's constructor."""
    kind, sep, arg = (spec or "").strip().partition(":")
    kind, arg = kind.lower(), arg.strip()
    if base_url is not None and kind != "openai":
        raise InputError(f"--verifier-url applies to openai:<model> only, not to {spec!r}")
    cost = modelled_cost(seconds)
    if kind == "vlm" and arg:
        from ade_runtime.verifiers.qwen import QwenVLVerifier

        return QwenVLVerifier.from_pretrained(arg, device=device or "cpu", dtype=dtype, cost=cost, **opts)
    if kind == "openai" and arg:
        from ade_runtime.verifiers.http import OpenAIVerifier

        return OpenAIVerifier(arg, base_url=base_url, cost=cost, **opts)
    if kind == "editscore" and arg:
        from ade_runtime.verifiers.editscore import EditScoreVerifier

        return EditScoreVerifier(arg, cost=cost, **opts)
    if kind == "emulated" and not sep:
        try:
            from ade_runtime.testbed.reward import EmulatedRewardModel
        except ImportError as exc:
            raise InputError(
                f"--verifier emulated: the testbed's emulated reward model is missing ({exc})"
            ) from exc
        if seconds is not None:
            opts["seconds_per_call"] = float(seconds)
        return EmulatedRewardModel(**opts)
    raise InputError(f"--verifier {spec!r} is not a verifier spec; use one of: {', '.join(SPEC_FORMS)}")
