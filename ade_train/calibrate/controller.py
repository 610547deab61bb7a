"""``PolicyCalibrator``: calibrated P(pass) and certified policy thresholds, as one fitted object.

In the style of MAPIE's risk controllers (``mapie.risk_control``): configure with a
``CalibrateConfig``, ``fit`` on the calibration split, then read the fitted attributes (names ending
in ``_``): the calibration maps, every replayed setting, the Pareto front and its p-values, the
exported setting and the certified claim. ``calibrate.job`` is the glue that reads the data and the
predictors, calls ``fit`` and writes the report, the plots and the export.

The steps: the signal table (``features``); the map chosen and fitted on the *fit* part (``fit``),
with a cheap-score fallback; the grid replayed on the whole split (``search``); the front found on the
fit part and certified on the disjoint *certify* part (``risk_control``, ``decision``); the paired
slack of the exported policy on the test split, which no choice saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ade_runtime.offline import Overhead
from ade_runtime.overhead import verifier_seconds
from ade_runtime.policy import PolicyConfig, cost_unit
from ade_runtime.policy.signals import CRITIQUE_FEATURE, VLM_FEATURE
from ade_runtime.predictors.calibration import CalibrationConfig, Calibrator
from ade_runtime.traces.records import EditRecord
from ade_train.calibrate.config import CalibrateConfig
from ade_train.calibrate.decision import (
    ExportDecision,
    certified_curve,
    certify_grid,
    certify_mask,
    decide,
    held_out_slack,
    replayer,
)
from ade_train.calibrate.features import SignalTable, build_signal_table
from ade_train.calibrate.fit import (
    choose_method,
    ece,
    fit_estimator,
    sklearn_proba,
    split_by_group,
    to_tensors,
)
from ade_train.calibrate.risk_control import Certificate
from ade_train.calibrate.search import SearchResult, search_thresholds, searched_base
from ade_train.quality import calibration_warning


class PolicyCalibrator:
    """Configure, ``fit(records, card=..., critique=..., test_records=...)``, read the fitted attributes.

    Fitted attributes:

    * ``table_``: the signals of every attempt of the split; ``cheap_features_``: the cheap scores
    * ``primary_fit_`` / ``cheap_fit_``: the map fitted on every signal and on the cheap scores only
      (None: no fallback needed), each a dict with its features, method choice, tensors and before /
      after figures; ``map_`` / ``fallback_``: the exported map and its fallback, and ``map_warning_``:
      why the cheap-score map replaced the primary one (None: it did not)
    * ``certify_ids_``: the requests kept apart to certify on
    * ``search_``: every replayed setting (``SearchResult``: candidates, reference, target)
    * ``certificate_``, ``front_`` (the settings tested, most compute first) and ``p_values_``
    * ``decision_``: what is exported and why; ``policy_``: the exported setting; ``claim_``: the claim
    * ``heldout_``: the exported policy's paired slack on the test split (None: no test split)
    * ``calibrator_``: the runtime ``Calibrator`` holding the map and ``policy_``
    * ``notes_`` / ``warnings_``: what the report says beside the figures
    """

    def __init__(self, config: CalibrateConfig) -> None:
        self.config = config

    def fit(
        self,
        records: Sequence[EditRecord],
        *,
        card: Any = None,
        critique: Any = None,
        test_records: Sequence[EditRecord] = (),
    ) -> PolicyCalibrator:
        """Fit the map, replay the grid, certify, and measure the held-out slack; returns ``self``."""
        cfg = self.config
        records = list(records)
        self.notes_: list[str] = []
        self.warnings_: list[str] = []
        self.table_ = table = build_signal_table(records, cfg.score_names, critique)
        self.notes_ += table.notes
        self.base_ = self._policy_base(records)
        base_config, tensors, used_critique = self._fit_maps(records, table, critique)
        calibrator = Calibrator(base_config, *tensors)
        overhead = self._overhead(used_critique, records)
        self.search_ = self._search(records, table, calibrator, card, used_critique)
        self._certify(self.search_)
        (self.warnings_ if self.decision_.status != "certified" else self.notes_).append(self.decision_.text)
        self.heldout_ = self._held_out(test_records, calibrator, card, used_critique, overhead)
        self.claim_record_ = self._claim_record()
        final_config = CalibrationConfig(
            **{**base_config.to_dict(), "policy": self.search_.chosen, "claim": self.claim_record_}
        )
        self.calibrator_ = Calibrator(final_config, *tensors)
        return self

    def plan(self, records: Sequence[EditRecord], *, card: Any = None, critique: Any = None) -> dict:
        """``ade-train calibrate --plan``: the map and the grid replay as ``fit`` does them, then the power
        analysis on the fit part alone (``decision.plan_grid``); nothing is certified or exported."""
        from ade_train.calibrate.decision import plan_grid

        cfg = self.config
        records = list(records)
        self.notes_, self.warnings_ = [], []
        self.table_ = table = build_signal_table(records, cfg.score_names, critique)
        self.base_ = self._policy_base(records)
        base_config, tensors, used_critique = self._fit_maps(records, table, critique)
        calibrator = Calibrator(base_config, *tensors)
        self.search_ = self._search(records, table, calibrator, card, used_critique)
        return plan_grid(cfg.risk_spec, self.search_, self.certify_ids_)

    def _policy_base(self, records: Sequence[EditRecord]) -> PolicyConfig:
        """``base_policy`` as the search holds it (``search.searched_base``: no refinement on judge-written
        refinement prompts), the reason in the notes."""
        base, note = searched_base(self.config.policy_base, records)
        if note:
            self.notes_.append(note)
        return base

    def _fit_maps(
        self, records: list[EditRecord], table: SignalTable, critique: Any
    ) -> tuple[CalibrationConfig, tuple, Any]:
        """The primary map and its cheap-score fallback, fitted on the fit part; (config, tensors, critique
        as the exported map reads it: None when the fallback replaced the primary map)."""
        cfg = self.config
        # the expensive verifier's score (a VLM reward model) is not a cheap signal: it is the cascade's
        # second stage, read by the primary map only; the fallback map (cheap scores) is the first stage
        cheap = [n for n in table.score_names if n != VLM_FEATURE]
        expensive = [VLM_FEATURE] if cfg.use_verifier and VLM_FEATURE in table.score_names else []
        if VLM_FEATURE in table.score_names and not cfg.use_verifier:
            self.notes_.append("use_verifier is off: the traces' vlm score is not a calibration input")
        primary_names = [*cheap, *([CRITIQUE_FEATURE] if critique is not None else []), *expensive]
        # split discipline: the map is fitted on the fit part; the certify part only certifies thresholds
        cert_mask = certify_mask([r.id for r in records], cfg.certify_fraction, cfg.seed)
        self.certify_ids_ = {r.id for r, m in zip(records, cert_mask, strict=True) if m}
        fit_table = table.subset({r.id for r in records} - self.certify_ids_)
        fitted = fit_head(fit_table, primary_names, cfg)
        self.map_fit_ids_ = {str(g) for g in fit_table.matrix(primary_names)[2]}  # the requests the map saw
        # the cheap-score fallback answers when the critique is missing (no image, pruned, failed)
        cheap_fit = fit_head(fit_table, cheap, cfg) if (critique is not None or expensive) and cheap else None
        self.cheap_features_ = list(cheap)
        self.primary_fit_, self.cheap_fit_ = fitted, cheap_fit
        self.map_, self.fallback_, self.map_warning_ = choose_map(fitted, cheap_fit)
        if self.map_warning_:  # the exported map reads no critique: its "critique missing" note is moot
            self.warnings_.append(self.map_warning_)
            self.notes_ = [n for n in self.notes_ if not n.startswith("critique missing")] + [
                "the critique's p_pass is not a calibration input (the cheap-score map is exported)"
            ]
        primary, fallback = self.map_, self.fallback_
        base_config = CalibrationConfig(
            feature_names=tuple(primary["names"]),
            method=primary["choice"].method,
            fallback_feature_names=tuple(cheap) if fallback else (),
            fallback_method=fallback["choice"].method if fallback else "logistic",
        )
        tensors = (primary["tensors"], fallback["tensors"] if fallback else None)
        return base_config, tensors, critique if self.map_warning_ is None else None

    def _overhead(self, critique: Any, records: Sequence[EditRecord] = ()) -> Overhead:
        cfg = self.config
        verify_s = cfg.verify_s if cfg.verify_s is not None else verifier_seconds(records)
        return Overhead(
            score_s=cfg.score_s,
            critique_s=cfg.critique_s if critique is not None else 0.0,
            preview_s=cfg.preview_s,
            verify_s=verify_s,
        )

    def _search(
        self, records: list[EditRecord], table: SignalTable, calibrator: Calibrator, card: Any, critique: Any
    ) -> SearchResult:
        """The threshold search by replay over the calibration split (``calibrate.search``)."""
        cfg = self.config
        unit = cost_unit(records)
        compute_key = "gpu_seconds_per_request" if unit == "seconds" else "nfe_per_request"
        if unit == "nfe" and (cfg.score_s or cfg.critique_s or cfg.preview_s):
            self.notes_.append(
                "traces have no latency_s: compute is NFE, the modelled scoring/critique/preview seconds "
                "are not counted"
            )
        result = search_thresholds(
            records,
            table.signals(calibrator),
            base=self.base_,
            grid=cfg.search_grid,
            card=table.card_fn(card) if card is not None else None,
            overhead=self._overhead(critique, records),
            compute_key=compute_key,
            target_fraction=cfg.target_fraction,
            margin=cfg.margin if cfg.risk == "margin" else None,
            reference_policy=cfg.reference_policy,
            reference_ids={r.id for r in records} - self.certify_ids_,  # best_of_n: chosen on the fit part
            max_reference_n=cfg.max_reference_n,
            use_prune=table.has_previews,
            min_requests=cfg.min_requests,
        )
        if not table.has_previews:
            self.notes_.append("no preview scores in the traces: prune_threshold not searched (pruning off)")
        return result  # its warnings are printed in the summary, after certification decided which apply

    def _certify(self, result: SearchResult) -> None:
        """Certify the replayed grid, decide what to export, and mark the chosen and certified rows."""
        cfg = self.config
        spec = cfg.risk_spec
        cert = certify_grid(
            spec,
            result.outcomes,
            result.reference_outcomes,
            self.certify_ids_,
            result.compute_key,
            max_margin=cfg.max_margin,
        )
        result.target_curve = certified_curve(result, self.certify_ids_, spec)
        search_choice = next(i for i, r in enumerate(result.candidates) if r["chosen"])
        decision = decide(
            cert,
            configs=result.configs,
            search_choice=search_choice,
            base=self.base_,
            reference_policy=result.reference["policy"],
            allow_uncertified=cfg.allow_uncertified,
        )
        result.choose(decision.index, decision.policy)
        if decision.status != "uncertified" and result.choice_warnings:
            # the search's remarks on its own choice do not apply to the policy exported instead
            result.warnings = result.warnings[: len(result.warnings) - result.choice_warnings]
        for i, row in enumerate(result.candidates):
            row["certified"] = i in cert.certified
        self.certificate_: Certificate = cert
        self.front_ = list(cert.order)
        self.p_values_ = list(cert.p_values)
        self.decision_: ExportDecision = decision
        self.policy_: PolicyConfig = decision.policy
        self.claim_ = cert.spec.claim

    def _claim_record(self) -> dict:
        """What the export states of its own guarantee, in the model card and every served trace."""
        cert, result = self.certificate_, self.search_
        idx = self.decision_.index
        compute = result.candidates[idx]["compute"] if idx is not None else result.reference["compute"]
        ref_compute = result.reference["compute"]
        unit = "gpu_seconds" if result.compute_key.startswith("gpu") else "nfe"
        return {
            "status": self.decision_.status,
            "claim": cert.spec.claim,
            "risk": cert.spec.form,
            "target": cert.spec.target,
            "delta": cert.spec.delta,
            "n_certify": cert.n_certify,
            "n_fit": cert.n_select,
            "p_value": cert.p_value,
            "reference": result.reference["policy"],
            "compute_unit": unit,
            "compute_share": round(float(compute) / float(ref_compute), 4) if ref_compute else None,
            "best_of_8_share": self._share_of_best_of_8(compute),
            # the margin asked for, when the fit part's power plan declared a wider one before testing
            "requested_target": cert.requested_target,
            "requested_n_needed": cert.requested_n_needed,
        }

    def _share_of_best_of_8(self, compute: float) -> float | None:
        """The export's compute over Best-of-8's on the calibration split (the number users compare)."""
        result = self.search_
        if result.reference["policy"] == "best_of_8":
            ref = result.reference["compute"]
        else:
            ref = (result.reference.get("best_of_8_compute")) or None
        return round(float(compute) / float(ref), 4) if ref else None

    def _held_out(
        self, test_records: Sequence[EditRecord], calibrator: Calibrator, card: Any, critique: Any, overhead
    ) -> dict | None:
        """The paired slack of the exported policy against the reference on the test split."""
        if not test_records:
            return None
        replay = replayer(test_records, self.cheap_features_, calibrator, card, critique, overhead)
        ref = replay(self.base_, self.search_.reference["policy"])
        heldout = held_out_slack(self.certificate_.spec, replay(self.policy_), ref)  # the declared margin
        heldout["split"] = "test"
        return heldout


def fit_head(table: SignalTable, names: Sequence[str], cfg: CalibrateConfig) -> dict[str, Any]:
    """Choose a method on held-out requests, refit it on the whole table; before/after figures."""
    X, y, groups = table.matrix(names)
    choice = choose_method(
        X,
        y,
        groups,
        methods=tuple(cfg.methods),
        held_out_fraction=cfg.held_out_fraction,
        min_isotonic_samples=cfg.min_isotonic_samples,
        C=cfg.C,
        seed=cfg.seed,
    )
    final = fit_estimator(X, y, choice.method, groups=groups, C=cfg.C, seed=cfg.seed)
    held = split_by_group(groups, cfg.held_out_fraction, salt=f"method-{cfg.seed}")
    # honest "after": the chosen method fitted without the held-out requests, scored on them
    if held.any() and (~held).any() and len(set(y[~held])) == 2:
        est = fit_estimator(X[~held], y[~held], choice.method, groups=groups[~held], C=cfg.C, seed=cfg.seed)
        p_after, y_after = sklearn_proba(est, X[held]), y[held]
    else:
        p_after, y_after = sklearn_proba(final, X), y
    p_before = table.raw_confidence(names)
    p_before, y_before = (p_before[held], y[held]) if held.any() else (p_before, y)
    return {
        "names": list(names),
        "choice": choice,
        "tensors": to_tensors(final),
        "n": len(y),
        "before": (p_before, y_before),
        "after": (p_after, y_after),
        "ece_before": ece(p_before, y_before, cfg.n_bins),
        "ece_after": ece(p_after, y_after, cfg.n_bins),
        "brier_after": float(
            np.mean((np.asarray(p_after, dtype=float) - np.asarray(y_after, dtype=float)) ** 2)
        ),
        "ece_in_sample": ece(sklearn_proba(final, X), y, cfg.n_bins),
    }


def choose_map(primary: dict, fallback: dict | None) -> tuple[dict, dict | None, str | None]:
    """(exported map, its fallback, warning): the cheap-score fallback replaces a primary map that is
    worse than it on held-out requests (``ade_train.quality.calibration_warning``)."""
    if fallback is None:
        return primary, None, None
    warning = calibration_warning(
        (primary["ece_after"], primary["brier_after"]), (fallback["ece_after"], fallback["brier_after"])
    )
    return (fallback, None, warning) if warning else (primary, fallback, None)
