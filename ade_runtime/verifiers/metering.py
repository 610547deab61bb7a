"""What an expensive verifier charges per call: a modelled cost when one is given, else the measured
wall time. The VLM verifiers (``qwen.py``, ``http.py``, ``editscore.py``) hold a ``CostMeter`` and
inherit ``Metered``; ``factory.py`` turns ``--verifier-seconds`` into the modelled cost.
"""

from __future__ import annotations

import math

from ade_runtime.errors import InputError
from ade_runtime.verifiers.base import VerifierCost


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
