"""Run configs of ``ade-train``: LightningCLI-layout YAML (``model:``, ``data:``, ``trainer:``) plus overrides.

A job's config is the packaged default (``ade_train/configs/<name>.yaml``), then ``--config FILE``
merged on top, then dotted command-line overrides as LightningCLI writes them
(``--model.hidden=[64,32]``, ``--trainer.max_epochs 5``; values parsed as YAML). Unknown sections or
keys are refused with the key and the file that named them, so a typo never silently trains the
default (lightning-hydra-template ``configs/``; LightningCLI's ``--print_config`` layout).

Public API::

    cfg = load_run_config("card", config_file=None, overrides=["--model.dropout=0.2"])
    dump_yaml(cfg) -> str
"""

from __future__ import annotations

import copy
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ade_runtime.errors import ADEError, InputError

_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
TRAINER_PRESETS = ("cpu", "ddp")  # ade_train/configs/trainer/<name>.yaml, shared by every job


def default_config(name: str) -> dict[str, Any]:
    """The packaged ``ade_train/configs/<name>.yaml`` (``name`` may be ``trainer/cpu``)."""
    res = resources.files("ade_train").joinpath("configs", f"{name}.yaml")
    if not res.is_file():
        raise InputError(f"no packaged config ade_train/configs/{name}.yaml")
    return yaml.safe_load(res.read_text(encoding="utf-8")) or {}


def trainer_config(preset: str | None) -> dict[str, Any]:
    """The shared trainer config: ``configs/trainer/{cpu,ddp}.yaml`` by name, or a YAML file path."""
    preset = preset or "cpu"
    if preset in TRAINER_PRESETS:
        return dict(default_config(f"trainer/{preset}"))
    path = Path(preset)
    if not path.is_file():
        raise InputError(f"--trainer-config {preset}: use one of {TRAINER_PRESETS} or an existing YAML file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise InputError(f"--trainer-config {path}: expected a mapping of lightning.Trainer arguments")
    return dict(data)


def _merge(
    base: dict[str, Any],
    extra: Mapping[str, Any],
    where: str,
    path: str = "",
    free: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    unknown = [f"{path}.{k}" if path else str(k) for k in extra if k not in base]
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}; known keys here: {sorted(base)}")
    for key, value in extra.items():
        full = f"{path}.{key}" if path else str(key)
        if full in free and isinstance(base[key], dict) and isinstance(value, Mapping):
            base[key] = {
                **base[key],
                **copy.deepcopy(dict(value)),
            }  # any keys: the job's config class checks them
        # a spec with a "kind" (encoder specs) is replaced as a whole: its keys depend on the kind
        elif isinstance(base[key], dict) and isinstance(value, Mapping) and "kind" not in base[key]:
            _merge(base[key], value, where, full, free)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _free_sections(cfg: Mapping[str, Any], path: str = "") -> frozenset[str]:
    """Dotted paths of the default's empty mappings (``base_policy: {}``): they take any keys, which the
    job's own config class checks (``PolicyConfig.from_dict``), since the default cannot list them."""
    out: set[str] = set()
    for key, value in cfg.items():
        full = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            out |= {full} if not value else _free_sections(value, full)
    return frozenset(out)


def parse_overrides(args: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``--a.b=v`` / ``--a.b v`` pairs -> ([a, b], yaml(v)); anything else is an error naming it."""
    out: list[tuple[list[str], Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise InputError(f"unrecognised argument {arg!r}; overrides look like --model.dropout=0.2")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise InputError(f"override {arg} has no value; write {arg}=VALUE")
            key, raw = arg[2:], args[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InputError(f"override --{key}: value {raw!r} is not valid YAML ({exc})") from None
        if isinstance(value, str) and _EXP_FLOAT.match(value):  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        out.append((key.split("."), value))
    return out


def load_run_config(
    name: str,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    trainer: str | None = None,
) -> dict[str, Any]:
    """Shared trainer config (``trainer``: cpu | ddp | YAML), the job's default config over it, then
    ``config_file``, then overrides; every key must exist in the default (``trainer.*`` takes any)."""
    cfg = default_config(name)
    free = _free_sections(cfg)
    if "trainer" in cfg:  # the job's own trainer keys (max_epochs, ...) over the shared preset
        cfg["trainer"] = {**trainer_config(trainer), **(cfg["trainer"] or {})}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise InputError(f"--config {path}: no such file")
        try:
            extra = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"--config {path}: not valid YAML ({exc})") from None
        if not isinstance(extra, Mapping):
            raise InputError(f"--config {path}: expected a mapping with model/data/trainer sections")
        _merge(cfg, extra, str(path), free=free)
    for keys, value in parse_overrides(overrides):
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        # trainer.* takes any Trainer argument, like LightningCLI
        if keys[0] == "trainer" and len(keys) == 2 and keys[1] not in cfg.get("trainer", {}):
            cfg.setdefault("trainer", {})[keys[1]] = value
            continue
        _merge(cfg, nested, "command line", free=free)
    return cfg


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)


def job_parser(command: str, description: str, run_dir: str, example: str) -> Any:
    """The argparse parser of a Lightning job with the shared flags (``add_common_args``)."""
    import argparse

    p = argparse.ArgumentParser(
        prog=f"ade-train {command}",
        description=description,
        epilog=f"Further overrides in LightningCLI style: {example} (see ade_train/configs/{command}.yaml "
        "and ade_train/configs/trainer/).",
    )
    add_common_args(p, run_dir=run_dir, config=command)
    return p


def parse_job_args(command: str, parser: Any, argv: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """(merged config, parsed flags): packaged config + --config + dotted overrides + shared flags."""
    args, rest = parser.parse_known_args(list(argv))
    cfg = load_run_config(command, args.config, rest, trainer=args.trainer)
    return apply_common_args(cfg, args), args


def add_common_args(p: Any, run_dir: str, config: str) -> None:
    """The flags every Lightning job of ``ade-train`` shares (``run_dir``: where its checkpoints go)."""
    p.add_argument("--data", required=True, help="trace dataset directory (*.jsonl shards + images)")
    p.add_argument(
        "--out", required=True, help="run directory shared by every job; export goes to OUT/export"
    )
    p.add_argument("--config", help=f"YAML merged over ade_train/configs/{config}.yaml")
    p.add_argument(
        "--trainer-config",
        dest="trainer",
        help=f"shared Lightning Trainer config: {' | '.join(TRAINER_PRESETS)} (ade_train/configs/trainer/) "
        "or a YAML file (default cpu)",
    )
    p.add_argument("--seed", type=int, help="seed of the splits, init and shuffling (seed_everything)")
    p.add_argument("--max-epochs", type=int, help="shortcut for --trainer.max_epochs")
    p.add_argument("--no-wandb", action="store_true", help="no W&B logger (same as logger: false)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: the config's `threads:`; null there = torch's own default)",
    )
    p.add_argument(
        "--resume", action="store_true", help=f"require {run_dir}/checkpoints/last.ckpt and resume from it"
    )
    p.add_argument("--force", action="store_true", help="retrain from scratch even if OUT holds a run")
    p.add_argument(
        "--print-config", "--print_config", action="store_true", help="print the merged config and exit"
    )


def apply_common_args(cfg: dict[str, Any], args: Any) -> dict[str, Any]:
    """Fold the flags every ``ade-train`` job shares (seed, epochs, W&B, data, out, resume) into ``cfg``."""
    if args.seed is not None:
        cfg["seed_everything"] = args.seed
    if args.max_epochs is not None:
        cfg["trainer"]["max_epochs"] = args.max_epochs
    if args.no_wandb:
        cfg["logger"] = False
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise InputError(f"--threads {args.threads}: must be >= 1 (e.g. --threads 1)")
        cfg["threads"] = args.threads
    cfg.update(data_path=args.data, out=args.out, resume="must" if args.resume else "auto", force=args.force)
    cfg["print_config"] = args.print_config
    return cfg


def set_threads(threads: int | None) -> None:
    """torch's intra-op CPU threads for this job (None: leave torch's default).

    Small models gain nothing from more threads, and on a busy machine idle OpenMP threads spin while
    they wait for a core: CARD's steps were 16x slower with 2 threads than with 1 on a loaded 2-core
    machine (``make bench-setup`` measures the jobs)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))


class Interrupted(BaseException):
    """Raised by ``guarded``'s SIGINT handler; not a KeyboardInterrupt, so Lightning's own Ctrl-C
    handling (a log line, then ``sys.exit(1)``) does not run and the job exits 130 with one line."""


def _on_sigint(signum: int, frame: Any) -> None:
    raise Interrupted


def guarded(command: str, body: Callable[[], Any]) -> int:
    """Run ``body`` as ``ade-train COMMAND``: 0 on success, 2 with one line on stderr for bad input,
    130 with one line on Ctrl-C (checkpoints are atomic, the same command resumes)."""
    previous = signal.signal(signal.SIGINT, _on_sigint) if _main_thread() else None
    try:
        body()
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)
    except (Interrupted, KeyboardInterrupt):
        print(f"ade-train {command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ADEError, FileNotFoundError, ValueError) as exc:
        print(f"ade-train {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_cli(
    command: str,
    build_config: Callable[[Sequence[str]], dict],
    train: Callable[[dict], Any],
    argv: Sequence[str] | None = None,
) -> int:
    """The body of every Lightning ``ade-train COMMAND`` (``guarded``: exit 0, 2 or 130)."""
    argv = sys.argv[1:] if argv is None else argv

    def body() -> None:
        cfg = build_config(list(argv))
        if cfg.pop("print_config"):
            print(dump_yaml(cfg))
            return
        if not Path(cfg["data_path"]).is_dir():
            raise InputError(
                f"--data {cfg['data_path']}: not a directory; pass a trace dataset (e.g. data/sample)"
            )
        set_threads(cfg.get("threads"))
        train(cfg)

    return guarded(command, body)
