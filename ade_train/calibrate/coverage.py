"""Does a certificate hold on requests no choice saw? Re-split coverage of certified thresholds.

Each re-split draws a calibration part, certifies on it (``risk_control.certify``: Pareto front on one
half, fixed-sequence Learn-then-Test on the other) and scores the chosen setting on the untouched rest,
beside today's uncertified choice (the cheapest setting meeting the target on the calibration part).
``ade_train.bench.certification`` runs it on the bench's held-out replay matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ade_train.calibrate.risk_control import RiskSpec, certify, losses


def cheapest_meeting_target(
    spec: RiskSpec, scores: np.ndarray, reference: np.ndarray | None, cost: Sequence[float]
) -> int | None:
    """Today's uncertified choice, for comparison: the cheapest setting whose *observed* loss meets alpha."""
    loss, alpha = losses(spec, scores, reference)
    ok = np.flatnonzero(loss.mean(axis=0) <= alpha + 1e-12)
    if ok.size == 0:
        return None
    c = np.asarray(cost, dtype=np.float64)
    return int(min(ok.tolist(), key=lambda j: (c[j], j)))


def meets(spec: RiskSpec, scores: np.ndarray, reference: np.ndarray | None) -> bool:
    """Whether a setting's scores meet the target on these requests (its mean loss <= alpha)."""
    loss, alpha = losses(spec, scores, reference)
    return bool(loss.mean() <= alpha + 1e-12)


def resplit_coverage(
    spec: RiskSpec,
    scores: np.ndarray,
    reference: np.ndarray | None,
    cost: np.ndarray,
    *,
    n_splits: int = 200,
    calibration_fraction: float = 0.5,
    seed: int = 0,
) -> dict:
    """How often the chosen setting meets its target on requests the choice never saw.

    Each re-split draws a calibration part (halved into selection and certification) and leaves the
    rest untouched. The certified choice and today's choice (the cheapest setting meeting the target
    on the whole calibration part) are both scored on the untouched part. When nothing is certified
    the conservative fallback is the reference itself, which meets a target <= 1 x reference by
    construction; such splits are counted apart.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    n = s.shape[0]
    n_cal = int(round(calibration_fraction * n))
    if n_cal < 4 or n - n_cal < 2:
        raise ValueError(f"resplit_coverage: {n} requests are too few to split")
    rng = np.random.default_rng(seed)
    cert_meets, naive_meets, uncertified, cert_cost, naive_cost = [], [], 0, [], []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        cal, held = perm[:n_cal], perm[n_cal:]
        sel, cer = cal[: n_cal // 2], cal[n_cal // 2 :]
        r = (lambda idx: None) if ref is None else (lambda idx: ref[idx])
        cert = certify(
            spec,
            select_scores=s[sel],
            select_reference=r(sel),
            select_cost=c[sel].mean(axis=0),
            certify_scores=s[cer],
            certify_reference=r(cer),
            search_strongest=False,
        )
        if cert.chosen is None:
            uncertified += 1
        else:
            cert_meets.append(meets(spec, s[held, cert.chosen], r(held)))
            cert_cost.append(float(c[held, cert.chosen].mean()))
        naive = cheapest_meeting_target(spec, s[cal], r(cal), c[cal].mean(axis=0))
        if naive is not None:
            naive_meets.append(meets(spec, s[held, naive], r(held)))
            naive_cost.append(float(c[held, naive].mean()))
    n_cert = len(cert_meets)
    return {
        "n_splits": n_splits,
        "n_requests": n,
        "n_calibration": n_cal,
        "n_untouched": n - n_cal,
        "target": spec.claim,
        "certified_splits": n_cert,
        "uncertified_splits": uncertified,
        "certified_coverage": float(np.mean(cert_meets)) if n_cert else None,
        "certified_miss_rate": float(1.0 - np.mean(cert_meets)) if n_cert else None,
        "required_coverage": 1.0 - spec.delta,
        "search_splits": len(naive_meets),
        "search_coverage": float(np.mean(naive_meets)) if naive_meets else None,
        "search_miss_rate": float(1.0 - np.mean(naive_meets)) if naive_meets else None,
        "certified_mean_cost": float(np.mean(cert_cost)) if cert_cost else None,
        "search_mean_cost": float(np.mean(naive_cost)) if naive_cost else None,
    }


def draw_coverage(
    spec: RiskSpec,
    scores: np.ndarray,
    references: np.ndarray,
    cost: np.ndarray,
    reference_cost: np.ndarray,
    *,
    n_calibration: int,
    certify_fraction: float = 0.5,
    draws: int = 200,
    truth_scores: np.ndarray | None = None,
    truth_references: np.ndarray | None = None,
    seed: int = 0,
    max_margin: float | None = None,
) -> dict:
    """Coverage on independent calibration draws: can the certificate be wrong, and how often is it?

    The population is the pool (``scores``: requests x settings, replayed once; ``references``: requests
    x reference candidates, e.g. Best-of-1/2/4/8; ``*cost``: compute per request). Each draw is an
    independent sample of ``n_calibration`` requests from it (with replacement, so draws are
    independent and identically distributed), cut into a fit part and a certify part: the reference
    is the best candidate on the fit part, the front is found there, and the certify part is tested.
    A certified choice is *wrong* when its true mean (over the whole pool, which is the population of
    the draws) misses the claim against the chosen reference's true mean. The guarantee bounds
    P(certified and wrong) by delta; draws that certify nothing export the reference and are counted as
    such (they are not wrong, and not a saving). ``truth_*``: the same settings on a disjoint sample of
    the same world, a second, independent verdict. ``max_margin``: the procedure as shipped, where each
    draw's fit part may declare a wider margin (``risk_control.declare_margin``); a certified choice is
    then wrong when it misses the margin that draw declared.
    """
    s, c = np.asarray(scores, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    refs, ref_c = np.asarray(references, dtype=np.float64), np.asarray(reference_cost, dtype=np.float64)
    if refs.ndim == 1:
        refs, ref_c = refs[:, None], ref_c[:, None]
    n = s.shape[0]
    if n_calibration < 4:
        raise ValueError(f"draw_coverage: n_calibration={n_calibration} is too few")
    n_cer = int(round(certify_fraction * n_calibration))
    rng = np.random.default_rng(seed)
    wrong = wrong_disjoint = certified = 0
    shares, certified_shares, chosen_refs, declared = [], [], [], []
    for _ in range(draws):
        idx = rng.integers(0, n, n_calibration)
        fit, cer = idx[: n_calibration - n_cer], idx[n_calibration - n_cer :]
        r = int(np.argmax(refs[fit].mean(axis=0)))  # the strongest reference on the fit part (first on a tie)
        chosen_refs.append(r)
        cert = certify(
            spec,
            select_scores=s[fit],
            select_reference=refs[fit, r],
            select_cost=c[fit].mean(axis=0),
            certify_scores=s[cer],
            certify_reference=refs[cer, r],
            search_strongest=False,
            plan_power=False,
            max_margin=max_margin,
            reference_cost=float(ref_c[fit, r].mean()),
        )
        declared.append(cert.spec.target)
        ref_cost = float(ref_c[:, r].mean())
        if cert.chosen is None:
            shares.append(1.0)
            continue
        certified += 1
        j = cert.chosen
        share = float(c[:, j].mean()) / ref_cost if ref_cost > 0 else float("nan")
        shares.append(share)
        certified_shares.append(share)
        if not meets(cert.spec, s[:, j], refs[:, r]):
            wrong += 1
        if truth_scores is not None and not meets(cert.spec, truth_scores[:, j], truth_references[:, r]):
            wrong_disjoint += 1
    return {
        "claim": spec.claim,
        "draws": draws,
        "n_pool": n,
        "n_calibration": n_calibration,
        "n_certify": n_cer,
        "certified_share": certified / draws,
        "certified_and_wrong": wrong / draws,
        "certified_and_wrong_disjoint": None if truth_scores is None else wrong_disjoint / draws,
        "n_disjoint": None if truth_scores is None else int(truth_scores.shape[0]),
        "delta": spec.delta,
        "holds": wrong / draws <= spec.delta,
        "mean_compute_share": float(np.mean(shares)),
        "mean_compute_share_when_certified": float(np.mean(certified_shares)) if certified_shares else None,
        "max_margin": max_margin,
        "declared_targets": {
            float(k): int(v) for k, v in zip(*np.unique(declared, return_counts=True), strict=True)
        },
        "reference_chosen": {
            int(k): int(v) for k, v in zip(*np.unique(chosen_refs, return_counts=True), strict=True)
        },
    }
