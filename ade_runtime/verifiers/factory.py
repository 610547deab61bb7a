"""``load_verifier(spec)``: an expensive verifier from one string, as ``--verifier SPEC`` gives it.

Specs: ``vlm:<hub id or local path>`` (VIEScore on Qwen2-VL / Qwen2.5-VL, ``qwen.py``),
``openai:<model>`` (any OpenAI-compatible endpoint, ``http.py``; needs ``base_url``),
``editscore:<EditScore weights, id or path>`` (the ``editscore`` package, ``editscore.py``),
``emulated`` (the testbed's emulated reward model, ``ade_runtime.testbed.reward``). Heavy
libraries load only when their spec is built. Each kind is an entry of ``VERIFIER_LOADERS``,
added by ``register_verifier`` (as peft's ``register_peft_method`` adds a method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.verifiers.base import Verifier
from ade_runtime.verifiers.metering import modelled_cost

VerifierLoader = Callable[..., Verifier]


@dataclass(frozen=True)
class VerifierEntry:
    """One kind of spec: ``kind:<arg>`` when ``form`` names an argument, else ``kind`` alone."""

    form: str  # how the spec is written, as the error messages and --help list it
    loader: VerifierLoader

    @property
    def takes_arg(self) -> bool:
        return ":" in self.form


# kind -> entry, in the order the specs are listed
VERIFIER_LOADERS: dict[str, VerifierEntry] = {}


def register_verifier(kind: str, form: str) -> Callable[[VerifierLoader], VerifierLoader]:
    """Decorator: ``loader`` builds the verifier of spec ``form`` (``kind:<...>`` or ``kind``). It is
    called as ``loader(arg, *, base_url, seconds, cost, device, dtype, **opts)``: the spec's argument
    ("" for a bare kind), the options of ``load_verifier`` and ``cost``, the modelled cost per call
    (None: measure each call)."""

    def register(loader: VerifierLoader) -> VerifierLoader:
        if kind in VERIFIER_LOADERS:
            raise ValueError(f"verifier kind {kind!r} is already registered")
        VERIFIER_LOADERS[kind] = VerifierEntry(form, loader)
        return loader

    return register


@register_verifier("vlm", "vlm:<hub id or local path>")
def _vlm(arg: str, *, base_url, seconds, cost, device, dtype, **opts: Any) -> Verifier:
    from ade_runtime.verifiers.qwen import QwenVLVerifier

    return QwenVLVerifier.from_pretrained(arg, device=device or "cpu", dtype=dtype, cost=cost, **opts)


@register_verifier("openai", "openai:<model>")
def _openai(arg: str, *, base_url, seconds, cost, device, dtype, **opts: Any) -> Verifier:
    from ade_runtime.verifiers.http import OpenAIVerifier

    return OpenAIVerifier(arg, base_url=base_url, cost=cost, **opts)


@register_verifier("editscore", "editscore:<id or path>")
def _editscore(arg: str, *, base_url, seconds, cost, device, dtype, **opts: Any) -> Verifier:
    from ade_runtime.verifiers.editscore import EditScoreVerifier

    return EditScoreVerifier(arg, cost=cost, **opts)


@register_verifier("emulated", "emulated")
def _emulated(arg: str, *, base_url, seconds, cost, device, dtype, **opts: Any) -> Verifier:
    try:
        from ade_runtime.testbed.reward import EmulatedRewardModel
    except ImportError as exc:
        raise InputError(
            f"--verifier emulated: the testbed's emulated reward model is missing ({exc})"
        ) from exc
    if seconds is not None:
        opts["seconds_per_call"] = float(seconds)
    return EmulatedRewardModel(**opts)


SPEC_FORMS = tuple(e.form for e in VERIFIER_LOADERS.values())  # the built-in specs


def _entry(spec: str) -> tuple[VerifierEntry | None, str]:
    """The registered entry ``spec`` is well formed for (None if none) and its argument."""
    kind, sep, arg = (spec or "").strip().partition(":")
    kind, arg = kind.lower(), arg.strip()
    entry = VERIFIER_LOADERS.get(kind)
    if entry is None or not (arg if entry.takes_arg else not sep):
        return None, arg
    return entry, arg


def _not_a_spec(spec: str) -> InputError:
    forms = ", ".join(e.form for e in VERIFIER_LOADERS.values())
    return InputError(f"--verifier {spec!r} is not a verifier spec; use one of: {forms}")


def check_spec(spec: str) -> None:
    """Refuse a malformed spec (one line) without loading anything."""
    if _entry(spec)[0] is None:
        raise _not_a_spec(spec)


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
    kind = (spec or "").strip().partition(":")[0].lower()
    if base_url is not None and kind != "openai":
        raise InputError(f"--verifier-url applies to openai:<model> only, not to {spec!r}")
    cost = modelled_cost(seconds)
    entry, arg = _entry(spec)
    if entry is None:
        raise _not_a_spec(spec)
    return entry.loader(
        arg, base_url=base_url, seconds=seconds, cost=cost, device=device, dtype=dtype, **opts
    )
