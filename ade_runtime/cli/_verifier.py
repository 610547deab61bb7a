"""``--verifier SPEC`` and its options, shared by ade-edit and ade-collect: parsing and building only."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.verifiers import SPEC_FORMS, Verifier, load_verifier


def add_verifier_args(p: argparse.ArgumentParser) -> None:
    """The expensive verifier's options (see docs/verifiers.md)."""
    p.add_argument(
        "--verifier",
        default="none",
        metavar="SPEC",
        help=f"expensive verifier (a VLM reward model), called in the uncertain band: none (default), "
        f"{', '.join(SPEC_FORMS)}",
    )
    p.add_argument(
        "--verifier-url",
        default=None,
        metavar="URL",
        help="base URL of the OpenAI-compatible endpoint for --verifier openai:<model>, e.g. "
        "http://localhost:8000/v1 (default: $OPENAI_BASE_URL); the key is read from $OPENAI_API_KEY",
    )
    p.add_argument(
        "--verifier-seconds",
        default=None,
        type=_seconds,
        metavar="S",
        help="modelled GPU-seconds charged per verifier call, instead of the measured wall time",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds per call must be a finite number >= 0")
    return value


def check_verifier_args(args: argparse.Namespace) -> None:
    """The cheap checks of the verifier options, before anything loads."""
    from ade_runtime.verifiers.factory import check_spec

    spec = (getattr(args, "verifier", None) or "none").strip()
    if spec.lower() != "none":
        check_spec(spec)


def build_verifier(args: argparse.Namespace, **opts: Any) -> Verifier | None:
    """The verifier ``--verifier`` names, or None for ``none``; ``--device`` / ``--dtype`` (when the
    CLI has them) place a local VLM. Raises ``InputError`` (one line) for a bad combination."""
    spec = (getattr(args, "verifier", None) or "none").strip()
    url, seconds = getattr(args, "verifier_url", None), getattr(args, "verifier_seconds", None)
    if spec.lower() == "none":
        if url is not None or seconds is not None:
            raise InputError("--verifier-url / --verifier-seconds need --verifier SPEC (it is none)")
        return None
    return load_verifier(
        spec,
        base_url=url,
        seconds=seconds,
        device=getattr(args, "device", None),
        dtype=getattr(args, "dtype", None),
        **opts,
    )
