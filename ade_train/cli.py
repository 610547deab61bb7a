"""``ade-train {card,critique,calibrate} ...``: the console script of the training side.

Dispatches to ``ade_train.card.cli_main(argv)``, ``ade_train.critique.cli_main(argv)`` and
``ade_train.calibrate.cli_main(argv)``, imported lazily so ``ade-train --help`` is instant and a
broken subcommand does not take the others down. Each ``cli_main`` returns an exit code:
0 success, 2 bad usage or input (one line on stderr, no traceback), 1 unexpected failure.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "card": ("ade_train.card", "train CARD (budget predictor) on a trace dataset and export it"),
    "critique": ("ade_train.critique", "train the DINOv2 critique head and export it"),
    "calibrate": ("ade_train.calibrate", "fit the confidence calibration and policy thresholds"),
    "refine-rule": ("ade_train.critique.refine", "fit when the critique refines instead of sampling afresh"),
}

USAGE = "usage: ade-train {" + ",".join(COMMANDS) + "} [options]   (ade-train COMMAND --help for options)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:<10} {doc}")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd not in COMMANDS:
        print(f"ade-train: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name = COMMANDS[cmd][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(
                f"ade-train {cmd}: not available in this install ({module_name} is missing)", file=sys.stderr
            )
            return 2
        raise
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
