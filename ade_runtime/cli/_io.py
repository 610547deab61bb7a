"""What every runtime CLI does the same way: output paths checked first, predictors loaded strictly,
user errors as one line with exit 2, Ctrl-C as one line with exit 130."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ade_runtime.errors import ADEError, InputError
from ade_runtime.traces.reader import reject_lines  # noqa: F401  (the CLIs report rejects with it)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted; rerun the same command to resume"
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def cli_main(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a ``main``: ADEError / OSError -> ``prog: message`` + exit 2; Ctrl-C -> exit 130."""

    def wrap(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            try:
                return fn(argv)
            except KeyboardInterrupt:
                print(f"{prog}: {INTERRUPTED}", file=sys.stderr)
                return EXIT_INTERRUPTED
            except ADEError as exc:
                print(f"{prog}: {exc}", file=sys.stderr)
                return EXIT_USER_ERROR
            except OSError as exc:  # a path the user gave: unreadable, unwritable, full disk
                where = f"{exc.filename}: " if exc.filename else ""
                print(
                    f"{prog}: {where}{exc.strerror or exc}; check the path and its permissions",
                    file=sys.stderr,
                )
                return EXIT_USER_ERROR

        return main

    return wrap


def _check_writable_dir(d: Path, option: str) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{option} {d}: cannot create the folder ({exc.strerror}); choose a writable path"
        ) from None
    if not d.is_dir():
        raise InputError(f"{option} {d}: not a folder; choose a folder path")
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"{option} {d}: the folder is not writable; choose a writable path")


def prepare_out_file(path: str | os.PathLike, option: str = "--out", suffixes: dict | None = None) -> Path:
    """Check an output file path before any work: known suffix, parent folders created and writable."""
    out = Path(path)
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    if out.is_dir():
        raise InputError(f"{option} {out}: is a folder; give a file name such as {out / 'edited.png'}")
    if suffixes and out.suffix.lower() not in suffixes:
        raise InputError(
            f"{option} {out}: unknown image type {out.suffix!r}; end the name in {', '.join(suffixes)}"
        )
    _check_writable_dir(out.parent if str(out.parent) else Path("."), option)
    return out


def prepare_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check (and create) an output folder before any work."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out}: is a file, not a folder; choose a folder path")
    _check_writable_dir(out, option)
    return out


def add_predictor_args(p: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    p.add_argument("--predictors", required=required, default=None, help=help)
    p.add_argument(
        "--allow-fallback",
        action="store_true",
        help="run without a predictor the export lacks (its fallback is printed and recorded in every trace); "
        "a corrupt predictor is refused either way",
    )


def load_predictors(args: argparse.Namespace, prog: str) -> Any:
    """``Predictors.load`` for a CLI: strict unless --allow-fallback, on the backbone's --device (if any);
    prints the OUT/export note and the fallbacks."""
    from ade_runtime.predictors.bundle import Predictors

    device = "cpu"
    if "device" in vars(args):  # a CLI with backbone options: the predictors follow --device
        from ade_runtime.cli._common import resolve_device

        device = resolve_device(args, prog)
    predictors = Predictors.load(args.predictors, strict=not args.allow_fallback, device=device)
    if predictors.note:
        print(f"{prog}: {predictors.note}", file=sys.stderr)
    for line in predictors.fallback_lines():
        print(f"{prog}: {line}", file=sys.stderr)
    return predictors


def check_backbone_name(name: str) -> None:
    """Refuse an unknown --backbone before anything is read or loaded."""
    from ade_runtime.backbones import BACKBONE_NAMES

    if name not in BACKBONE_NAMES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
