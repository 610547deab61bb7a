"""Risk control for the policy thresholds: Learn-then-Test over a compute-ordered Pareto front.

The maths only (the risk, its losses, the WSR and Hoeffding-Bentkus p-values, the Pareto order,
fixed-sequence testing, the certificate); ``calibrate.decision`` applies it to a replayed grid and
``calibrate.coverage`` checks it by re-splitting.

A threshold setting (tau_high, tau_low, S_max, CARD quantile, ...) is *certified* when, with
probability at least 1 - delta over the calibration requests, its expected loss against the
reference is at most alpha. Learn-then-Test (Angelopoulos, Bates, Candes, Jordan & Lei, 2021)
turns that into multiple testing: one null hypothesis "risk > alpha" per setting, a valid p-value
for each, and a family-wise error control. Pareto testing (Laufer-Goldshtein, Fisch, Barzilay &
Jaakkola, ICLR 2023) finds the candidates worth testing on one part of the data -- the settings not
dominated in (compute, quality) -- and orders them from the most to the least compute, so that
fixed-sequence testing on the other part spends the whole delta on each test in turn and stops at
the first setting it cannot certify. The cheapest certified setting is the answer.

The testing comes from MAPIE's risk-control module (mapie >= 1.6): fixed-sequence FWER control
(``control_fwer``) and, as one of the two p-values, Hoeffding-Bentkus (``compute_hoeffding_bentkus_p_value``).
Hoeffding-Bentkus ignores the variance of the loss, and ADE's paired loss has a small variance around a
small gap: with a few hundred requests it certifies nothing that is not far better than the reference.
The default p-value is therefore the Waudby-Smith--Ramdas betting bound (JRSS-B 2024, "Estimating means
of bounded random variables by betting"; the form LTT's reference code uses), written here because MAPIE
does not ship it: a capital process K_t = prod (1 + nu_t (alpha - l_t)) with a predictable bet nu_t in
[0, 1] is a nonnegative supermartingale under "risk >= alpha", so p = 1 / max_t K_t is valid (Ville). MAPIE's
controllers (``BinaryClassificationController`` ...) cannot express ADE's risk: it is not a property
of one prediction but of a whole replayed policy, paired with a reference policy on the same request,
so the controllers' ``predict_function`` / ``RiskLoss`` interface has nothing to call. The loss matrix
is built here and handed to MAPIE's p-value and testing functions directly.

Three forms of risk, all bounded in [0, 1] as the p-value needs:

* ``margin`` (the default): "mean judge score >= the reference's mean - epsilon", a non-inferiority
  margin declared on the judge's 0-1 scale before the data is seen. The paired loss d_i = ref_i - score_i
  lies in [-1, 1]; rescaled, l_i = (d_i + 1) / 2 lies in [0, 1] and mean(d) <= epsilon iff
  mean(l) <= alpha = (1 + epsilon) / 2. Unlike a ratio, epsilon does not move with the reference's
  strength or the category mix, and a policy that merely matches the reference can be certified.
* ``relative``: "mean judge score >= f x the reference's" (the reference: Best-of-N with the same
  verifier). The paired loss d_i = f * ref_i - score_i lies in [-1, f]; rescaled,
  l_i = (d_i + 1) / (1 + f) lies in [0, 1] and mean(d) <= 0 iff mean(l) <= alpha = 1 / (1 + f).
* ``absolute``: "pass rate >= p": l_i = 1 - pass_i (binary, the tighter Bentkus bound), alpha = 1 - p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from mapie.risk_control import control_fwer
from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

from ade_train.pareto import pareto_order

FORMS = ("margin", "relative", "absolute")
P_VALUES = ("wsr", "hb")


def check_margin(margin: float) -> None:
    """The declared non-inferiority margin epsilon (mean score >= reference - epsilon): in [0, 0.5]."""
    if not 0.0 <= margin <= 0.5:
        raise ValueError(f"margin={margin}: use an epsilon in [0, 0.5] on the judge's 0-1 scale, e.g. 0.02")


def check_target_fraction(fraction: float) -> None:
    """The relative quality target f (mean score >= f x reference): in (0, 1.5]."""
    if not 0.0 < fraction <= 1.5:
        raise ValueError(f"target_fraction={fraction}: use a fraction in (0, 1.5] such as 1.0 or 0.98")


@dataclass(frozen=True)
class RiskSpec:
    """What is certified: ``margin`` (mean score >= reference - target), ``relative`` (mean score >=
    target x reference) or ``absolute`` (pass rate >= target)."""

    form: str = "margin"
    target: float = (
        0.02  # margin: epsilon on the 0-1 scale; relative: the fraction f; absolute: the pass rate
    )
    delta: float = 0.1  # the certificate fails with probability at most delta
    p_value: str = "wsr"  # "wsr" (Waudby-Smith--Ramdas betting) or "hb" (Hoeffding-Bentkus, MAPIE)

    def __post_init__(self) -> None:
        # the one place these are checked: CalibrateConfig builds its RiskSpec to validate risk, delta, p_value
        if self.form not in FORMS:
            raise ValueError(
                f"risk form {self.form!r}: use 'margin' (reference score - epsilon), 'relative' "
                "(x reference score) or 'absolute' (pass rate)"
            )
        if self.form == "margin":
            check_margin(self.target)
        elif self.form == "relative":
            check_target_fraction(self.target)
        elif not 0.0 < self.target < 1.0:
            raise ValueError(f"target pass rate (--pass-rate) must be in (0, 1), e.g. 0.7, got {self.target}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta={self.delta}: use a failure probability in (0, 1), e.g. 0.1")
        if self.p_value not in P_VALUES:
            raise ValueError(f"p_value={self.p_value!r}: use one of {P_VALUES}")

    def with_target(self, target: float) -> RiskSpec:
        return RiskSpec(self.form, float(target), self.delta, self.p_value)

    @property
    def paired(self) -> bool:
        """Whether the risk compares with a reference policy on the same requests."""
        return self.form != "absolute"

    @property
    def claim(self) -> str:
        if self.form == "margin":
            return f">= reference mean score - {self.target:.3g} at delta = {self.delta:g}"
        if self.form == "relative":
            return f">= {self.target:.3g} x reference mean score at delta = {self.delta:g}"
        return f"pass rate >= {self.target:.3g} at delta = {self.delta:g}"


def losses(spec: RiskSpec, scores: np.ndarray, reference: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Per-request losses in [0, 1] (n x K) and the level alpha they must stay under on average.

    ``scores``: judge scores (relative form) or pass indicators (absolute form), n requests x K settings;
    ``reference``: the reference policy's judge score per request (relative form only).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if spec.form == "absolute":
        return 1.0 - np.clip(s, 0.0, 1.0), 1.0 - spec.target
    if reference is None:
        raise ValueError(f"the {spec.form} form needs the reference policy's scores")
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 1)
    if spec.form == "margin":
        d = np.clip(ref, 0.0, 1.0) - np.clip(s, 0.0, 1.0)
        return np.clip((d + 1.0) / 2.0, 0.0, 1.0), (1.0 + spec.target) / 2.0
    f = spec.target
    d = f * ref - np.clip(s, 0.0, 1.0)
    return np.clip((d + 1.0) / (1.0 + f), 0.0, 1.0), 1.0 / (1.0 + f)


def wsr_p_values(loss: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Waudby-Smith--Ramdas betting p-value of "mean loss >= alpha" for each column of ``loss`` (n x K).

    The bet nu_t = min(1, sqrt(2 ln(1/delta) / (n sigma_{t-1}^2))) uses only the losses before t
    (predictable), with the running mean and variance started at 1/2 and 1/4 as in WSR's Theorem 3.
    """
    x = np.asarray(loss, dtype=np.float64)
    n = x.shape[0]
    t = np.arange(1, n + 1, dtype=np.float64)[:, None]
    mu = (0.5 + np.cumsum(x, axis=0)) / (1.0 + t)
    var = (0.25 + np.cumsum((x - mu) ** 2, axis=0)) / (1.0 + t)
    var = np.vstack([np.full((1, x.shape[1]), 0.25), var[:-1]])  # predictable: variance before step t
    nu = np.minimum(np.sqrt(2.0 * math.log(1.0 / delta) / (n * var)), 1.0)
    log_k = np.cumsum(np.log1p(nu * (alpha - x)), axis=0)
    return np.minimum(1.0, np.exp(-np.maximum(log_k.max(axis=0), 0.0)))


def p_values(
    loss: np.ndarray, alpha: float, *, binary: bool, delta: float = 0.1, method: str = "wsr"
) -> np.ndarray:
    """p-value of "mean loss > alpha" for each column: ``wsr`` (betting) or ``hb`` (Hoeffding-Bentkus, MAPIE)."""
    if method == "hb":
        return compute_hoeffding_bentkus_p_value(loss.mean(axis=0), loss.shape[0], alpha, binary=binary)[:, 0]
    if method == "wsr":
        return wsr_p_values(loss, alpha, delta)
    raise ValueError(f"p-value method must be one of {P_VALUES}, got {method!r}")


@dataclass
class Certificate:
    """The outcome of one certification: what was tested, with which p-values, and what holds."""

    spec: RiskSpec
    alpha: float
    n_select: int
    n_certify: int
    order: list[int]  # candidate indices tested, in the sequence tested (most compute first)
    p_values: list[float]  # p-value of each tested candidate, in ``order``
    certified: list[int]  # the prefix of ``order`` that was certified
    chosen: int | None  # the cheapest certified candidate (None: nothing could be certified)
    strongest_target: float | None = None  # the strongest target the same data certifies (a diagnostic:
    # chosen after seeing the certify part, so never itself certified)
    n_needed: int | None = (
        None  # certification requests for 80% power at ``spec`` (``power``, on the fit part)
    )
    power: float | None = None  # P(certify) at n_certify, planned on the fit part before testing
    observed_loss: list[float] = field(default_factory=list)  # mean loss of each tested candidate
    # the margin asked for, when the fit part's plan declared a wider one (``spec``) before testing
    requested_target: float | None = None
    requested_power: float | None = None  # planned power of the requested margin at n_certify
    requested_n_needed: int | None = None  # certification requests for 80% power at the requested margin

    @property
    def p_value(self) -> float | None:
        if self.chosen is None:
            return None
        return self.p_values[self.order.index(self.chosen)]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["spec"] = asdict(self.spec)
        out["claim"] = self.spec.claim
        out["p_value"] = self.p_value
        out["certified_any"] = self.chosen is not None
        return out

    @property
    def widened(self) -> bool:
        """Whether the plan declared a wider margin than the one asked for."""
        return self.requested_target is not None

    def widening_text(self) -> str:
        """'margin 0.02 asked; ...' when the fit part's plan widened the declared margin, else ''."""
        if not self.widened:
            return ""
        more = (
            f"; epsilon = {self.requested_target:.3g} needs about {self.requested_n_needed} certification requests "
            f"({max(0, self.requested_n_needed - self.n_certify)} more)"
            if self.requested_n_needed is not None
            else f"; epsilon = {self.requested_target:.3g} is out of reach of the front found on the fit part"
        )
        return (
            f"epsilon = {self.requested_target:.3g} was asked, but the fit part plans power "
            f"{self.requested_power:.2f} for it on {self.n_certify} requests, so epsilon = {self.spec.target:.3g} "
            f"was declared before testing{more}"
        )

    def explain(self) -> str:
        """One paragraph for the report and the model card."""
        head = f"target {self.spec.claim}; n = {self.n_certify} certification requests"
        if self.widened:
            head += f" ({self.widening_text()})"
        power = f"planned power {self.power:.2f}" if self.power is not None else "power not planned"
        if self.chosen is not None:
            return (
                f"certified: {head}; {len(self.certified)} of {len(self.order)} settings on the front certified, "
                f"the cheapest chosen (p = {self.p_value:.3g}; {power})"
            )
        need = (
            f"about {self.n_needed} certification requests give 80% power (resampling the fit part; {power} "
            f"at n = {self.n_certify})"
            if self.n_needed is not None
            else "no number of requests would do: the front's best setting misses the claim on the fit part"
        )
        strongest = (
            f"the strongest claim these requests would have passed is "
            f"{self.spec.with_target(self.strongest_target).claim} (a diagnostic found after testing, "
            "not a certificate)"
            if self.strongest_target is not None
            else "no weaker target within the search range passes either"
        )
        return f"NOT certified: {head}; {need}; {strongest}"


def certify(
    spec: RiskSpec,
    *,
    select_scores: np.ndarray,
    select_reference: np.ndarray | None,
    select_cost: Sequence[float],
    certify_scores: np.ndarray,
    certify_reference: np.ndarray | None,
    search_strongest: bool = True,
    plan_power: bool = True,
    max_margin: float | None = None,
    reference_cost: float | None = None,
) -> Certificate:
    """Pareto front on the selection requests, fixed-sequence LTT on the disjoint certification requests.

    ``*_scores``: n x K (judge scores, or pass indicators for the absolute form) of K candidate
    settings; ``select_cost``: K mean compute per request on the selection part. ``max_margin`` (margin
    form): when the selection part plans under 80% power for ``spec``'s margin on the certification
    requests for a setting at <= half of ``reference_cost``, the smallest margin up to ``max_margin`` with 80%
    planned power (else ``max_margin``) is declared instead, before the certification part is read
    (``declare_margin``).
    """
    sel = np.asarray(select_scores, dtype=np.float64)
    cer = np.asarray(certify_scores, dtype=np.float64)
    if sel.ndim != 2 or cer.ndim != 2 or sel.shape[1] != cer.shape[1] or len(select_cost) != sel.shape[1]:
        raise ValueError(
            f"certify: scores must be n x K with the same K and K costs, got {sel.shape}, {cer.shape}, "
            f"{len(select_cost)} costs"
        )
    if cer.shape[0] == 0:
        raise ValueError("certify: the certification part has no requests")
    order = pareto_order(select_cost, sel.mean(axis=0))
    requested = None
    widen = max_margin is not None and max_margin > spec.target and reference_cost is not None
    if widen and spec.form == "margin" and order:
        requested = spec
        spec, req_power, req_needed = declare_margin(
            spec, sel, select_reference, select_cost, float(reference_cost), cer.shape[0], max_margin
        )
    cert = _test(spec, order, cer, certify_reference)
    cert.n_select = int(sel.shape[0])
    if requested is not None and spec.target != requested.target:
        cert.requested_target, cert.requested_power, cert.requested_n_needed = (
            requested.target,
            req_power,
            req_needed,
        )
    if plan_power and order and sel.shape[0] >= 2:  # planned on the fit part alone, as before collection
        from ade_train.calibrate.power import n_for_power, power_at

        pilot = sel[:, order]
        cert.power = power_at(spec, pilot, select_reference, cer.shape[0])
        cert.n_needed = n_for_power(spec, pilot, select_reference)
    if cert.chosen is None:
        if search_strongest:
            cert.strongest_target = _strongest(spec, order, cer, certify_reference)
    else:
        cert.strongest_target = spec.target
    return cert


MARGIN_STEP = 0.005  # declared margins are rounded up to this step (a claim users read)
SAVING_SHARE = 0.5  # a margin is planned for a saving: certifying a setting at <= this x the reference's cost


def declare_margin(
    spec: RiskSpec,
    select_scores: np.ndarray,
    select_reference: np.ndarray | None,
    select_cost: Sequence[float],
    reference_cost: float,
    n_certify: int,
    max_margin: float,
    seed: int = 0,
) -> tuple[RiskSpec, float | None, int | None]:
    """The margin to certify, from the selection (fit) part alone (requests x settings: ``select_scores``).

    The plan asks for a *saving*: the power to certify a front down to its first setting at <= SAVING_SHARE
    x ``reference_cost``. A front found and planned on the same requests is optimistic (the settings that
    look best there are partly lucky), so the selection part is halved: the front is found on one half and
    its power planned by resampling the other. ``spec`` is kept when that power is >= 80% on ``n_certify``
    requests; else the smallest margin up to ``max_margin`` that gives it (rounded up to MARGIN_STEP), else
    ``max_margin``. Returns (declared spec, the requested margin's planned power, the certification
    requests it needs for 80% power; None: out of reach). The certification part is never read, so the
    declared claim is fixed before testing and the certificate keeps its level."""
    from ade_train.calibrate.power import POWER, n_for_power, power_at, smallest_margin

    sel = np.asarray(select_scores, dtype=np.float64)
    if sel.shape[0] < 4:
        return spec, None, None
    perm = np.random.default_rng([seed, sel.shape[0]]).permutation(sel.shape[0])
    a, b = perm[: sel.shape[0] // 2], perm[sel.shape[0] // 2 :]
    cost = np.asarray(select_cost, dtype=np.float64)
    order = pareto_order(cost, sel[a].mean(axis=0))
    cheap = [i for i, k in enumerate(order) if cost[k] <= SAVING_SHARE * reference_cost]
    if not cheap:
        return spec, None, None
    need = cheap[0] + 1
    pilot = sel[b][:, order]
    pilot_ref = None if select_reference is None else np.asarray(select_reference, dtype=np.float64)[b]
    power = power_at(spec, pilot, pilot_ref, n_certify, need=need)
    if power >= POWER:
        return spec, power, None
    eps = smallest_margin(spec, pilot, pilot_ref, n_certify, ceiling=max_margin, need=need)
    eps = max_margin if eps is None else min(max_margin, math.ceil(eps / MARGIN_STEP - 1e-9) * MARGIN_STEP)
    needed = n_for_power(spec, pilot, pilot_ref, need=need)
    return spec.with_target(round(max(eps, spec.target), 4)), power, needed


def _test(spec: RiskSpec, order: list[int], scores: np.ndarray, reference: np.ndarray | None) -> Certificate:
    loss, alpha = losses(spec, scores[:, order], reference)
    binary = spec.form == "absolute"
    pv = p_values(loss, alpha, binary=binary, delta=spec.delta, method=spec.p_value) if order else np.zeros(0)
    rejected = control_fwer(pv, spec.delta, fwer_method="fixed_sequence").tolist() if order else []
    certified = [order[i] for i in sorted(rejected)]
    return Certificate(
        spec=spec,
        alpha=float(alpha),
        n_select=0,
        n_certify=int(scores.shape[0]),
        order=list(order),
        p_values=[float(p) for p in pv],
        certified=certified,
        chosen=certified[-1] if certified else None,
        observed_loss=[float(v) for v in loss.mean(axis=0)] if order else [],
    )


def _strongest(
    spec: RiskSpec, order: list[int], scores: np.ndarray, reference: np.ndarray | None, tol: float = 0.005
) -> float | None:
    """The strongest target the same test passes: the largest fraction or pass rate below ``spec.target``,
    or the smallest margin above it (bisection between the declared target and the weakest one tried)."""

    def passes(target: float) -> bool:
        return _test(spec.with_target(target), order, scores, reference).chosen is not None

    if spec.form == "margin":
        weakest, step = 0.5, tol / 5
    else:
        weakest, step = (0.5 if spec.form == "relative" else 0.01), tol
    if not passes(weakest):
        return None
    strong, weak = spec.target, weakest  # the weak end passes; the strong end is not known to
    while abs(weak - strong) > step:
        mid = (strong + weak) / 2.0
        if passes(mid):
            weak = mid
        else:
            strong = mid
    return round(weak, 4)
