"""The library never imports a CLI: only the command-line entry points import ``ade_runtime.cli``.

The CLIs adapt their parsed options to library functions (``ade_runtime.stack``,
``ade_runtime.offline``, ``ade_runtime.backbones``); a library module that needs something a CLI
holds means that thing belongs in the library. Module-level and function-level imports alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the entry points (and the CLI package itself), each with why it may import a CLI module
ENTRY_POINTS = {
    "ade_runtime/serve/server.py": "ade-serve's main: the backbone and predictor options of the CLIs",
    "ade_runtime/scale/ray_collect.py": "ade-collect --ray, called from ade-collect's main only",
    "ade_train/bench/ray_collect.py": "a `python -m` bench of the ade-collect command itself",
}


def _cli_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "ade_runtime.cli" or n.startswith("ade_runtime.cli.") for n in names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_entry_points_import_the_cli_modules():
    offenders = []
    for pkg in ("ade_runtime", "ade_train"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("ade_runtime/cli/") or rel in ENTRY_POINTS:
                continue
            offenders += _cli_imports(path)
    assert offenders == [], (
        "library modules importing ade_runtime.cli (move what they need out of it):\n" + "\n".join(offenders)
    )


def test_the_scan_sees_every_form_of_import(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    pkg = tmp_path / "ade_runtime" / "serve"
    pkg.mkdir(parents=True)
    for i, line in enumerate(
        (
            "from ade_runtime.cli._common import build_backbone",
            "from ade_runtime.cli import edit",
            "import ade_runtime.cli.replay",
            "from ade_runtime import cli",
            "from ..cli.edit import main",
            "def f():\n    from ade_runtime.cli.collect import Collector",
        )
    ):
        (pkg / f"m{i}.py").write_text(line + "\n")
        assert _cli_imports(pkg / f"m{i}.py"), line
    (pkg / "ok.py").write_text("from ade_runtime.stack import build_scorer\nfrom ..offline import evaluate\n")
    assert _cli_imports(pkg / "ok.py") == []
