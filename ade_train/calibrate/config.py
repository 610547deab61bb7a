"""``CalibrateConfig``: one ``ade-train calibrate`` job, and its command line.

The defaults live in one place, ``ade_train/configs/calibrate.yaml``: every field below takes its
default from there. A job's config goes through the same layer as ``ade-train card`` and
``critique`` (``ade_train.runconfig``): the packaged YAML, then ``--config FILE``, then dotted
overrides (``--grid.s_max=[1,2]``, ``--score_s=0.1``), unknown keys refused; then the named flags.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.policy import PolicyConfig, preset
from ade_runtime.predictors.calibration import METHODS
from ade_train.calibrate.risk_control import RiskSpec, check_margin, check_target_fraction
from ade_train.calibrate.search import SearchGrid
from ade_train.runconfig import default_config, load_run_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "calibrate.yaml"
RUN_TIME_KEYS = ("threads", "plan")  # in the YAML, not in CalibrateConfig: never saved with the report or W&B


@cache
def _packaged() -> dict[str, Any]:
    return default_config("calibrate")


def packaged_defaults() -> dict[str, Any]:
    """A fresh copy of ``configs/calibrate.yaml``, the defaults of ``CalibrateConfig`` and ``SearchGrid``."""
    return copy.deepcopy(_packaged())


def _default(name: str) -> Any:
    return field(default_factory=lambda: packaged_defaults()[name])


@dataclass
class CalibrateConfig:
    """One calibration job (mirrors ``configs/calibrate.yaml``, which holds every default)."""

    data: str = ""  # trace dataset directory (the same one CARD and the critique were trained on)
    out: str = ""  # training output directory; predictors are read from and exported to OUT/export
    margin: float = _default("margin")  # risk margin: chosen policy's mean score >= reference's - margin
    max_margin: float | None = _default("max_margin")  # widest margin declared from the fit part's plan
    target_fraction: float = _default("target_fraction")  # risk relative: mean score >= this x reference's
    reference_policy: str = _default(
        "reference_policy"
    )  # best_of_n (chosen on the fit part) or a policy name
    max_reference_n: int = _default("max_reference_n")  # the largest N best_of_n considers
    seed: int = _default("seed")  # salt of the request-id splits inside the calibration split
    split: str = _default("split")  # auto: OUT/splits.json or split_ids; all: every judged request of data
    # (a set collected for calibration alone, e.g. ade-collect with this export's critique refining)
    score_names: list[str] | None = _default("score_names")  # cheap signals; None = every judged one's
    use_critique: bool = _default("use_critique")  # use the exported critique's p_pass when there is one
    use_verifier: bool = _default("use_verifier")  # read the expensive verifier's score (vlm) if logged
    verify_s: float | None = _default("verify_s")  # GPU-seconds per verifier call; None = meta.reward_model
    methods: list[str] = _default("methods")  # calibration methods compared on held-out data
    held_out_fraction: float = _default("held_out_fraction")  # requests held out to choose the method
    min_isotonic_samples: int = _default("min_isotonic_samples")  # isotonic needs this many fitting attempts
    C: float = _default("C")  # inverse L2 strength of the logistic regression
    n_bins: int = _default("n_bins")  # bins of the ECE and the reliability diagrams
    min_requests: int = _default("min_requests")  # warn below this many calibration requests
    score_s: float = _default("score_s")  # modelled GPU-seconds to compute the cheap scores of one attempt
    critique_s: float = _default("critique_s")  # modelled GPU-seconds of one critique call (when used)
    preview_s: float = _default("preview_s")  # modelled GPU-seconds of decoding and scoring one preview
    grid: dict[str, Any] = _default("grid")  # SearchGrid's value lists; keys left out keep the YAML's
    base_policy: dict[str, Any] = _default("base_policy")  # PolicyConfig fields not searched
    risk: str = _default("risk")  # relative: score >= target_fraction x reference; absolute: pass rate
    pass_rate: float | None = _default("pass_rate")  # the absolute target (risk: absolute)
    delta: float = _default("delta")  # the certificate fails with probability at most delta
    p_value: str = _default("p_value")  # wsr (Waudby-Smith--Ramdas betting) or hb (Hoeffding-Bentkus)
    certify_fraction: float = _default("certify_fraction")  # calibration requests kept apart to certify on
    allow_uncertified: bool = _default("allow_uncertified")  # export the uncertified choice if none certifies
    wandb: bool = _default("wandb")  # log to W&B (offline unless WANDB_MODE says otherwise)
    project: str = _default("project")  # W&B project

    def __post_init__(self) -> None:
        try:
            check_target_fraction(self.target_fraction)
            check_margin(self.margin)
            if self.max_margin is not None:
                check_margin(self.max_margin)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if self.max_reference_n < 1:
            raise InputError(f"max_reference_n={self.max_reference_n}: use N >= 1, e.g. 8")
        if self.reference_policy != "best_of_n":
            try:
                preset(self.reference_policy)
            except ValueError as exc:
                raise InputError(
                    f"reference_policy={self.reference_policy!r}: {exc}; or use best_of_n"
                ) from None
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise InputError(f"methods {self.methods}: choose a non-empty subset of {list(METHODS)}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise InputError(f"held_out_fraction={self.held_out_fraction}: use a value in (0, 1), e.g. 0.3")
        if self.verify_s is not None and self.verify_s < 0:
            raise InputError(f"verify_s={self.verify_s} must be >= 0 (GPU-seconds per verifier call)")
        for name in ("score_s", "critique_s", "preview_s", "C"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)} must be >= 0")
        if self.risk == "absolute" and self.pass_rate is None:
            raise InputError("risk=absolute needs --pass-rate in (0, 1), e.g. 0.7")
        target = {"absolute": self.pass_rate, "margin": self.margin}.get(self.risk, self.target_fraction)
        try:  # risk, pass_rate, delta and p_value are checked by the RiskSpec they make
            self.risk_spec = RiskSpec(self.risk, float(target), delta=self.delta, p_value=self.p_value)
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None
        if not 0.0 < self.certify_fraction < 1.0:
            raise InputError(f"certify_fraction={self.certify_fraction}: use a value in (0, 1), e.g. 0.5")
        unknown = set(self.grid) - {f.name for f in fields(SearchGrid)}
        if unknown:
            raise InputError(
                f"grid: unknown keys {sorted(unknown)}; use {[f.name for f in fields(SearchGrid)]}"
            )
        self.search_grid = SearchGrid(**self.grid)  # the keys left out: SearchGrid's, the YAML's grid
        try:
            self.policy_base = PolicyConfig.from_dict(self.base_policy)
        except (TypeError, ValueError) as exc:
            raise InputError(f"base_policy: {exc}") from None

    @classmethod
    def from_run_config(cls, cfg: dict[str, Any]) -> CalibrateConfig:
        """From a merged run config (``build_config``), leaving its run-time keys out."""
        kwargs = {k: v for k, v in cfg.items() if k not in (*RUN_TIME_KEYS, "print_config", "data_path")}
        if "data_path" in cfg:  # --data, named as in the other jobs' run configs
            kwargs["data"] = cfg["data_path"]
        return cls(**kwargs)


def load_config(path: str | Path | None = None, **overrides: Any) -> CalibrateConfig:
    """``configs/calibrate.yaml``, ``path`` merged over it, then ``overrides`` (None values skipped)."""
    cfg = load_run_config("calibrate", path)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return CalibrateConfig.from_run_config(cfg)


def parser() -> argparse.ArgumentParser:
    """``ade-train calibrate``'s flags; anything else on the line is a dotted override of the YAML."""
    p = argparse.ArgumentParser(
        prog="ade-train calibrate",
        description="Fit the calibrated confidence P(pass) and certify the adaptive policy's thresholds.",
        epilog="Further overrides of ade_train/configs/calibrate.yaml in LightningCLI style: "
        "--grid.s_max=[1,2] --score_s=0.1 --base_policy.max_candidates=4",
    )
    p.add_argument("--data", required=True, help="trace dataset directory (edit-trace v1)")
    p.add_argument("--out", required=True, help="training output dir; reads and extends OUT/export")
    p.add_argument("--config", default=None, help="YAML merged over ade_train/configs/calibrate.yaml")
    p.add_argument(
        "--target-fraction", type=float, help="with --risk relative: quality target x the reference (1.0)"
    )
    p.add_argument("--seed", type=int, help="split seed when OUT has no splits.json")
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: the config's `threads:`; null = torch's)"
    )
    p.add_argument(
        "--print-config", "--print_config", action="store_true", help="print the merged config and exit"
    )
    p.add_argument(
        "--split",
        choices=("auto", "all"),
        help="auto: the training run's calibration split; all: every judged request of --data (a set "
        "collected for calibration, e.g. with ade-collect with --predictors OUT/export)",
    )
    g = p.add_argument_group("certification (Learn-then-Test; docs/calibration.md)")
    g.add_argument("--delta", type=float, help="certificate failure probability (default 0.1)")
    g.add_argument(
        "--margin",
        type=float,
        help="the declared margin epsilon: mean judge score >= the reference's - epsilon (default 0.02)",
    )
    g.add_argument(
        "--max-margin",
        dest="max_margin",
        type=float,
        help="when the fit part plans under 80%% power for --margin, declare the smallest margin up to this "
        "with 80%% planned power (fit part only) and certify that (default 0.05; --max-margin equal to "
        "--margin never widens)",
    )
    g.add_argument(
        "--risk",
        choices=("margin", "relative", "absolute"),
        help="margin: mean score >= reference - --margin (default); relative: >= --target-fraction x "
        "reference; absolute: pass rate >= --pass-rate",
    )
    g.add_argument(
        "--reference",
        dest="reference_policy",
        help="best_of_n (default: the best Best-of-N, N <= max_reference_n, chosen on the fit part) or a "
        "policy name such as best_of_8",
    )
    g.add_argument(
        "--plan",
        action="store_true",
        help="print the power analysis (certification requests needed for the claim at 80%% power, by "
        "resampling the fit part) and exit without certifying or exporting",
    )
    g.add_argument("--pass-rate", type=float, help="the absolute target, e.g. 0.7")
    g.add_argument("--p-value", choices=("wsr", "hb"), help="wsr (default) or hb")
    g.add_argument("--certify-fraction", type=float, help="calibration requests kept to certify (0.7)")
    g.add_argument(
        "--allow-uncertified",
        action="store_true",
        default=None,
        help="when nothing certifies, export the cheapest setting meeting the target on the calibration "
        "requests (flagged) instead of the conservative reference policy",
    )
    return p


FLAGS = (
    "target_fraction",
    "margin",
    "max_margin",
    "reference_policy",
    "seed",
    "split",
    "delta",
    "risk",
    "pass_rate",
    "p_value",
    "certify_fraction",
)


def build_config(argv: Sequence[str]) -> dict[str, Any]:
    """The merged run config: YAML, ``--config``, dotted overrides, then the named flags."""
    args, rest = parser().parse_known_args(list(argv))
    cfg = load_run_config("calibrate", args.config, rest)
    cfg.update({k: getattr(args, k) for k in (*FLAGS, "allow_uncertified") if getattr(args, k) is not None})
    if args.no_wandb:
        cfg["wandb"] = False
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads {args.threads}: must be >= 1 (e.g. --threads 1)")
        cfg["threads"] = args.threads
    cfg.update(data_path=args.data, out=args.out, print_config=args.print_config, plan=args.plan)
    return cfg
