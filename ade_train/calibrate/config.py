"""``CalibrateConfig``: one ``ade-train calibrate`` job (mirrors ``ade_train/configs/calibrate.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.calibration import METHODS
from ade_train.calibrate.search import SearchGrid

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "calibrate.yaml"


@dataclass
class CalibrateConfig:
    """One calibration job (mirrors ``configs/calibrate.yaml``)."""

    data: str = ""  # trace dataset directory (the same one CARD and the critique were trained on)
    out: str = ""  # training output directory; predictors are read from and exported to OUT/export
    target_fraction: float = 1.0  # chosen policy's mean judge score >= this x the reference's
    reference_policy: str = "best_of_8"  # the baseline the quality target is taken from
    seed: int = 0  # salt of the request-id splits inside the calibration split
    split: str = "auto"  # auto: OUT/splits.json or split_ids; all: every judged request of data (a set
    # collected for calibration alone, e.g. ade-collect with this export's critique writing the refinements)
    score_names: list[str] | None = None  # cheap signals; None = those every judged attempt has
    use_critique: bool = True  # use the exported critique's p_pass when OUT/export has one
    use_verifier: bool = True  # read the expensive verifier's score (``vlm``) when the traces carry it
    verify_s: float | None = None  # GPU-seconds per verifier call; None = the traces' meta.reward_model
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # methods compared on held-out data
    held_out_fraction: float = 0.3  # requests held out to choose the method
    min_isotonic_samples: int = 1000  # isotonic maps need at least this many fitting attempts
    C: float = 1.0  # inverse L2 strength of the logistic regression
    n_bins: int = 10  # bins of the ECE and the reliability diagrams
    min_requests: int = 100  # warn below this many calibration requests (finite-sample margin)
    score_s: float = 0.0  # modelled GPU-seconds to compute the cheap scores of one attempt
    critique_s: float = 0.0  # modelled GPU-seconds of one critique call (charged when it is used)
    preview_s: float = 0.0  # modelled GPU-seconds of decoding and scoring one preview
    grid: dict[str, list] = field(default_factory=dict)  # overrides of SearchGrid's value lists
    base_policy: dict[str, Any] = field(default_factory=dict)  # PolicyConfig fields not searched
    risk: str = (
        "relative"  # relative: mean score >= target_fraction x reference; absolute: pass rate >= pass_rate
    )
    pass_rate: float | None = None  # the absolute target (risk: absolute)
    delta: float = 0.1  # the certificate fails with probability at most delta (Learn-then-Test)
    p_value: str = "wsr"  # wsr (Waudby-Smith--Ramdas betting) or hb (Hoeffding-Bentkus, MAPIE)
    certify_fraction: float = 0.5  # share of the calibration requests kept apart to certify on
    allow_uncertified: bool = False  # export the uncertified cheapest choice when nothing certifies
    wandb: bool = True  # log to W&B (offline unless WANDB_MODE says otherwise)
    project: str = "ade"  # W&B project

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fraction <= 1.5:
            raise InputError(f"target_fraction={self.target_fraction}: use a fraction such as 1.0 or 0.98")
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
        if self.risk not in ("relative", "absolute"):
            raise InputError(
                f"risk={self.risk!r}: use 'relative' (x reference score) or 'absolute' (pass rate)"
            )
        if self.risk == "absolute" and not (self.pass_rate is not None and 0.0 < self.pass_rate < 1.0):
            raise InputError("risk=absolute needs --pass-rate in (0, 1), e.g. 0.7")
        if not 0.0 < self.delta < 1.0:
            raise InputError(f"delta={self.delta}: use a failure probability in (0, 1), e.g. 0.1")
        if self.p_value not in ("wsr", "hb"):
            raise InputError(f"p_value={self.p_value!r}: use 'wsr' or 'hb'")
        if not 0.0 < self.certify_fraction < 1.0:
            raise InputError(f"certify_fraction={self.certify_fraction}: use a value in (0, 1), e.g. 0.5")
        unknown = set(self.grid) - {f.name for f in fields(SearchGrid)}
        if unknown:
            raise InputError(
                f"grid: unknown keys {sorted(unknown)}; use {[f.name for f in fields(SearchGrid)]}"
            )
        self.search_grid = SearchGrid(**self.grid)
        try:
            self.policy_base = PolicyConfig.from_dict(self.base_policy)
        except (TypeError, ValueError) as exc:
            raise InputError(f"base_policy: {exc}") from None


def load_config(path: str | Path | None, **overrides: Any) -> CalibrateConfig:
    """Read a YAML config (``configs/calibrate.yaml`` when None) and apply command-line overrides."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise InputError(f"{path}: config file not found; pass --config with an existing YAML file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of CalibrateConfig fields, got {type(data).__name__}")
    known = {f.name for f in fields(CalibrateConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; valid keys are {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return CalibrateConfig(**data)
