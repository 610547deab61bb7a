"""From a replayed threshold grid to the exported policy: split discipline, the certificate, the decision.

The calibration split is cut (by request id) into a *fit* part and a *certify* part. The calibrated map
is fitted on the fit part only; every grid setting is replayed over both parts (``calibrate.search``);
the Pareto front of (compute, quality) is found on the fit part and certified by fixed-sequence
Learn-then-Test on the certify part (``calibrate.risk_control``). The exported policy is then:

* the cheapest certified setting; or, when nothing can be certified at the requested target,
* the reference policy itself (Best-of-N with the same calibrated selector: conservative, and meeting a
  target of at most 1 x reference by construction), saying why and what would make a certificate
  possible; or, with ``allow_uncertified``, today's uncertified choice, flagged as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ade_runtime.offline import Outcome
from ade_runtime.offline.intervals import paired_difference
from ade_runtime.policy import PolicyConfig, preset
from ade_train.calibrate.fit import split_by_group
from ade_train.calibrate.risk_control import Certificate, RiskSpec, certify


def certify_mask(ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """True for the requests of the certify part (stable in the request id, disjoint from the fit part)."""
    return split_by_group(np.asarray(list(ids)), fraction, salt=f"certify-{seed}")


def _value(spec: RiskSpec, o: Outcome) -> float:
    return float(o.passed) if spec.form == "absolute" else float(o.score)


def _cost(o: Outcome, compute_key: str) -> float:
    return float(o.seconds) if compute_key == "gpu_seconds_per_request" else float(o.nfe)


def certify_grid(
    spec: RiskSpec,
    outcomes: Sequence[Sequence[Outcome]],
    reference: Sequence[Outcome],
    certify_ids: set[str],
    compute_key: str,
    *,
    diagnostics: bool = True,
    max_margin: float | None = None,
) -> Certificate:
    """Certify the replayed grid (``outcomes[k]``: setting k on every calibration request, same order);
    ``diagnostics``: also plan the power (fit part) and find the strongest passing target."""
    cer, values, costs, ref = grid_matrices(spec, outcomes, reference, certify_ids, compute_key)
    return certify(
        spec,
        select_scores=values[~cer],
        select_reference=ref[~cer],
        select_cost=costs[~cer].mean(axis=0),
        certify_scores=values[cer],
        certify_reference=ref[cer],
        search_strongest=diagnostics,
        plan_power=diagnostics,
        max_margin=max_margin,
        reference_cost=float(
            np.mean([_cost(o, compute_key) for o, c in zip(reference, cer, strict=True) if not c])
        ),
    )


def grid_matrices(
    spec: RiskSpec,
    outcomes: Sequence[Sequence[Outcome]],
    reference: Sequence[Outcome],
    certify_ids: set[str],
    compute_key: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(certify mask, values n x K, costs n x K, reference scores n) of a replayed grid."""
    ids = [o.id for o in reference]
    cer = np.array([i in certify_ids for i in ids])
    if cer.all() or not cer.any():
        raise ValueError("certify_grid: the fit and certify parts must both hold requests")
    values = np.array([[_value(spec, o) for o in outs] for outs in outcomes]).T  # n x K
    costs = np.array([[_cost(o, compute_key) for o in outs] for outs in outcomes]).T
    ref = np.array([o.score for o in reference])
    return cer, values, costs, ref


def plan_grid(
    spec: RiskSpec,
    result,
    certify_ids: set[str],
    n_grid: Sequence[int] = (100, 200, 300, 400, 600, 800, 1200, 1600, 2400),
) -> dict:
    """The power analysis of ``ade-train calibrate --plan``, from the fit part alone: the front found there,
    resampled to each n of ``n_grid`` (``calibrate.power``); the certify part is not read."""
    from ade_train.calibrate.power import n_for_power, plan, power_at, smallest_margin
    from ade_train.pareto import pareto_order

    cer, values, costs, ref = grid_matrices(
        spec, result.outcomes, result.reference_outcomes, certify_ids, result.compute_key
    )
    fit = ~cer
    order = pareto_order(costs[fit].mean(axis=0), values[fit].mean(axis=0))
    pilot, pilot_ref = values[fit][:, order], ref[fit]
    ref_cost = float(
        np.mean(
            [_cost(o, result.compute_key) for o, f in zip(result.reference_outcomes, fit, strict=True) if f]
        )
    )
    rows = plan(spec, pilot, pilot_ref, costs[fit].mean(axis=0)[order], ref_cost, n_grid=n_grid)
    n_cert = int(cer.sum())
    out = {
        "claim": spec.claim,
        "reference": result.reference["policy"],
        "n_fit": int(fit.sum()),
        "n_certify": n_cert,
        "front": len(order),
        "power_at_n_certify": power_at(spec, pilot, pilot_ref, n_cert),
        "n_for_80pct_power": n_for_power(spec, pilot, pilot_ref),
        "rows": [r.to_dict() for r in rows],
        "compute_key": result.compute_key,
    }
    if spec.form == "margin":
        out["smallest_margin_at_n_certify"] = smallest_margin(spec, pilot, pilot_ref, n_cert)
    return out


@dataclass
class ExportDecision:
    """What is exported and why (not the loop's per-attempt ``ade_runtime.policy.session.Decision``)."""

    policy: PolicyConfig
    status: str  # "certified" | "conservative" | "uncertified"
    certificate: Certificate
    index: int | None  # the grid setting exported (None: the reference policy)
    text: str

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "index": self.index,
            "text": self.text,
            "policy": self.policy.to_dict(),
            "certificate": self.certificate.to_dict(),
        }


def decide(
    cert: Certificate,
    *,
    configs: Sequence[PolicyConfig],
    search_choice: int,
    base: PolicyConfig,
    reference_policy: str,
    allow_uncertified: bool,
) -> ExportDecision:
    if cert.chosen is not None:
        return ExportDecision(configs[cert.chosen], "certified", cert, cert.chosen, cert.explain())
    if allow_uncertified:
        text = (
            f"{cert.explain()}. Exported UNCERTIFIED: the cheapest setting meeting the target on the "
            "calibration requests (--allow-uncertified); its quality holds on those requests only"
        )
        return ExportDecision(configs[search_choice], "uncertified", cert, search_choice, text)
    ref = preset(reference_policy, base)
    text = (
        f"{cert.explain()}. Exported the conservative policy: {reference_policy} with the calibrated selector "
        "(the reference itself: meets any margin >= 0 by construction, saves no compute); collect more "
        "calibration requests (ade-train calibrate --plan says how many), declare a wider --margin, or pass "
        "--allow-uncertified"
    )
    return ExportDecision(ref, "conservative", cert, None, text)


def held_out_slack(
    spec: RiskSpec, ours: Sequence[Outcome], reference: Sequence[Outcome], level: float = 0.9
) -> dict:
    """Paired slack on requests no choice saw: mean(ours) - target x mean(reference), with its interval."""
    ref = {o.id: o for o in reference}
    pairs = [(o, ref[o.id]) for o in ours if o.id in ref]
    if spec.form == "absolute":
        a = [float(o.passed) for o, _ in pairs]
        b = [spec.target] * len(pairs)
    elif spec.form == "margin":
        a = [o.score for o, _ in pairs]
        b = [r.score - spec.target for _, r in pairs]
    else:
        a = [o.score for o, _ in pairs]
        b = [spec.target * r.score for _, r in pairs]
    d = paired_difference(a, b, level=level)
    return {
        **d.to_dict(),
        "meaning": {
            "margin": "mean(policy) - (mean(reference) - margin)",
            "relative": "mean(policy) - target x mean(reference)",
        }.get(spec.form, "pass rate - target pass rate"),
    }


def replayer(records, score_names, calibrator, card, critique, overhead):
    """``(policy, name) -> outcomes`` over ``records``, with their signals and CARD predictions computed once."""
    from ade_runtime.offline import replay_policy
    from ade_runtime.offline.signals import card_prediction
    from ade_train.calibrate.features import build_signal_table

    signals = build_signal_table(records, score_names, critique).signals(calibrator)
    preds = {r.id: card_prediction(r, card) for r in records} if card is not None else {}

    def replay(policy: PolicyConfig, name: str = "ade") -> list[Outcome]:
        def card_fn(r):
            return preds[r.id].plan(policy.card_quantile, card_cap=policy.card_cap)

        return replay_policy(records, name, policy, signals, card_fn if card is not None else None, overhead)

    return replay


TARGET_CURVE = {  # the targets of the "ADE across targets" curve, per risk form
    "relative": (0.9, 0.95, 0.98, 1.0, 1.02),
    "margin": (0.0, 0.01, 0.02, 0.03, 0.05),
}


def certified_curve(result, certify_ids: set[str], spec: RiskSpec) -> list[dict]:
    """What the same test would pass at each target of ``TARGET_CURVE`` (same data, same front): the
    shape of the compute-quality trade-off. Only the declared target is a certificate: these rows reuse
    one certify part without correction, so each says ``certificate: false`` unless it is the declared one."""
    out = []
    for target in TARGET_CURVE.get(spec.form, ()):
        c = certify_grid(
            spec.with_target(target),
            result.outcomes,
            result.reference_outcomes,
            certify_ids,
            result.compute_key,
            diagnostics=False,
        )
        out.append(
            {
                "target": target,
                "passes": c.chosen is not None,
                "certificate": bool(abs(target - spec.target) < 1e-12),
                "p_value": c.p_value,
                "policy": None if c.chosen is None else result.configs[c.chosen].to_dict(),
            }
        )
    return out


def certificate_metrics(decision: ExportDecision, heldout: dict | None, n_certify: int) -> dict:
    """The figures the summary, the W&B run and the model card carry."""
    c = decision.certificate
    m = {
        "certificate": decision.status,
        "certified_claim": c.spec.claim,
        "risk": c.spec.form,
        "margin": c.spec.target if c.spec.form == "margin" else None,
        "delta": c.spec.delta,
        "n_certify": n_certify,
        "n_fit": c.n_select,
        "certificate_p_value": c.p_value,
        "certificate_power_planned": c.power,
        "strongest_passing_target_diagnostic": c.strongest_target,
        "n_needed_for_80pct_power": c.n_needed,
        # set when the fit part's plan declared a wider margin than the one asked for (before testing)
        "requested_margin": c.requested_target,
        "requested_margin_power_planned": c.requested_power,
        "requested_margin_n_needed": c.requested_n_needed,
    }
    if heldout is not None:
        m.update(
            heldout_slack=heldout["diff"], heldout_slack_lo=heldout["lo"], heldout_slack_hi=heldout["hi"]
        )
        m["heldout_requests"] = heldout["n"]
    return m
