"""The calibrated confidence: torch maps equal scikit-learn's, artifacts round-trip, NaN never confident."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ade_runtime.errors import ArtifactError, InputError
from ade_runtime.policy import PolicyConfig
from ade_runtime.predictors.calibration import CalibrationConfig, CalibrationHead, Calibrator
from ade_train.calibrate.fit import choose_method, ece, fit_estimator, sklearn_proba, to_tensors

FEATURES = ("clip_t", "clip_i", "critique")


def _data(n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(0.25, 0.05, n), rng.normal(0.85, 0.05, n), rng.uniform(0, 1, n)])
    logit = 20 * (X[:, 0] - 0.25) - 8 * (X[:, 1] - 0.85) + 4 * (X[:, 2] - 0.5)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    groups = np.array([f"req-{i // 4:04d}" for i in range(n)])
    return X, y, groups


def _probe(seed: int = 1) -> np.ndarray:
    """Inputs inside and well outside the fitted range (isotonic clips there)."""
    X, _, _ = _data(60, seed)
    return np.vstack([X, X.min(0) - 1.0, X.max(0) + 1.0])


@pytest.mark.parametrize("method", ["logistic", "logistic+isotonic"])
def test_torch_head_equals_the_sklearn_estimator_it_was_exported_from(method):
    X, y, groups = _data()
    est = fit_estimator(X, y, method, groups=groups, seed=0)
    head = CalibrationHead(method, X.shape[1], to_tensors(est))
    probe = _probe()
    ours = head(torch.as_tensor(probe)).numpy()
    np.testing.assert_allclose(ours, sklearn_proba(est, probe), atol=1e-6, rtol=0)
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_isotonic_equals_sklearn_and_the_hand_computed_pav_fit():
    # Pool-adjacent-violators on y = 0, 1, 0, 1 pools the middle pair into 0.5.
    X = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([0, 1, 0, 1])
    est = fit_estimator(X, y, "isotonic")
    head = CalibrationHead("isotonic", 1, to_tensors(est))
    probe = np.array([[-5.0], [1.0], [1.5], [2.5], [3.5], [4.0], [9.0]])
    ours = head(torch.as_tensor(probe)).numpy()
    np.testing.assert_allclose(ours, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(ours, sklearn_proba(est, probe), atol=1e-6)
    Xr, yr, _ = _data()
    est = fit_estimator(Xr[:, 2:], yr, "isotonic")
    head = CalibrationHead("isotonic", 1, to_tensors(est))
    np.testing.assert_allclose(
        head(torch.as_tensor(_probe()[:, 2:])).numpy(), sklearn_proba(est, _probe()[:, 2:]), atol=1e-6
    )


def _calibrator(policy: PolicyConfig | None = None) -> tuple[Calibrator, object, object]:
    X, y, groups = _data()
    primary = fit_estimator(X, y, "logistic+isotonic", groups=groups)
    fallback = fit_estimator(X[:, :2], y, "logistic")
    cfg = CalibrationConfig(
        feature_names=FEATURES,
        method="logistic+isotonic",
        fallback_feature_names=FEATURES[:2],
        fallback_method="logistic",
        policy=policy,
    )
    return Calibrator(cfg, to_tensors(primary), to_tensors(fallback)), primary, fallback


def test_predict_proba_dict_and_tensor_agree_with_sklearn():
    cal, primary, _ = _calibrator()
    probe = _probe()
    batch = cal.predict_proba(torch.as_tensor(probe))
    np.testing.assert_allclose(batch.numpy(), sklearn_proba(primary, probe), atol=1e-6)
    one = cal.predict_proba(dict(zip(FEATURES, probe[3].tolist(), strict=True)))
    assert isinstance(one, float)
    assert one == pytest.approx(float(batch[3]), abs=1e-12)
    assert cal.feature_names == list(FEATURES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_missing_critique_uses_the_cheap_score_fallback(bad):
    cal, _, fallback = _calibrator()
    row = {"clip_t": 0.3, "clip_i": 0.8, "critique": bad}
    expected = float(sklearn_proba(fallback, np.array([[0.3, 0.8]]))[0])
    assert cal.predict_proba(row) == pytest.approx(expected, abs=1e-6)
    assert cal.uses_fallback(row) == "fallback"
    assert cal.predict_proba({"clip_t": 0.3, "clip_i": 0.8}) == pytest.approx(expected, abs=1e-6)


def test_non_finite_cheap_scores_are_never_confident():
    cal, primary, fallback = _calibrator()
    x = torch.tensor(
        [
            [0.4, 0.8, 0.99],  # all present: primary
            [float("nan"), 0.8, 0.99],  # a cheap score missing: no map applies
            [0.4, float("inf"), float("nan")],
            [0.4, 0.8, float("nan")],  # critique missing: fallback
        ],
        dtype=torch.float64,
    )
    p = cal.predict_proba(x)
    assert torch.isfinite(p).all()
    assert p[0] == pytest.approx(float(sklearn_proba(primary, x[:1].numpy())[0]), abs=1e-6)
    assert p[1] == 0.0 and p[2] == 0.0  # missing_confidence: below any tau_high and any evidence
    assert p[3] == pytest.approx(float(sklearn_proba(fallback, x[3:, :2].numpy())[0]), abs=1e-6)
    assert cal.uses_fallback({"clip_t": float("nan"), "clip_i": 0.8, "critique": 0.9}) == "missing"


def test_round_trip_keeps_every_tensor_the_policy_and_the_exact_files(tmp_path):
    policy = PolicyConfig(tau_high=0.9, tau_low=0.1, s_max=2, card_quantile=0.7, prune_threshold=0.05)
    cal, _, _ = _calibrator(policy)
    cal.save_pretrained(tmp_path, metrics={"ece_after": 0.01})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json", "calibration.safetensors"]
    on_disk = load_file(tmp_path / "calibration.safetensors")
    assert set(on_disk) == set(cal.tensors())
    loaded = Calibrator.from_pretrained(tmp_path)
    for key, value in cal.tensors().items():
        assert torch.equal(loaded.tensors()[key], value), key
        assert torch.equal(on_disk[key], value), key
    assert loaded.policy == policy
    assert loaded.config.to_dict() == cal.config.to_dict()
    probe = torch.as_tensor(_probe())
    assert torch.equal(loaded.predict_proba(probe), cal.predict_proba(probe))
    meta = json.loads((tmp_path / "calibration.json").read_text())
    assert meta["kind"] == "calibration" and meta["metrics"] == {"ece_after": 0.01}


def test_loading_a_tampered_artifact_names_the_problem(tmp_path):
    cal, _, _ = _calibrator(PolicyConfig())
    cal.save_pretrained(tmp_path)
    original = json.loads((tmp_path / "calibration.json").read_text())
    meta = json.loads(json.dumps(original))
    del meta["config"]["feature_names"]
    (tmp_path / "calibration.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="feature_names"):
        Calibrator.from_pretrained(tmp_path)
    meta = json.loads(json.dumps(original))
    meta["config"]["fallback_method"] = "logistic+isotonic"  # claims tensors the file does not hold
    (tmp_path / "calibration.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"needs tensors \['iso_x', 'iso_y'\]"):
        Calibrator.from_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="no policy"):
        _ = Calibrator(CalibrationConfig(feature_names=("clip_t",))).policy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"feature_names": ()}, "empty"),
        ({"feature_names": ("a", "a")}, "duplicates"),
        ({"feature_names": ("a", "b"), "method": "isotonic"}, "one signal"),
        ({"feature_names": ("a",), "method": "sigmoid"}, "choose one of"),
        ({"feature_names": ("a",), "fallback_feature_names": ("b",)}, "subset"),
        ({"feature_names": ("a",), "missing_confidence": 2.0}, "missing_confidence"),
        ({"feature_names": ("a",), "policy": {"tau_high": 0.2, "tau_low": 0.5}}, "tau_low"),
    ],
)
def test_config_checks_name_the_field(kwargs, match):
    with pytest.raises(InputError, match=match):
        CalibrationConfig(**kwargs)


def test_predict_proba_rejects_a_tensor_with_the_wrong_columns():
    cal, _, _ = _calibrator()
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        cal.predict_proba(torch.zeros(2, 2))
    with pytest.raises(InputError, match="'clip_t' is 'high', not a number"):
        cal.predict_proba({"clip_t": "high", "clip_i": 0.8})


def test_small_sets_choose_sigmoid_and_large_sets_may_choose_isotonic():
    X, y, groups = _data(240)
    small = choose_method(X, y, groups)
    assert small.method == "logistic"
    assert not small.candidates["logistic+isotonic"]["eligible"]
    assert "isotonic overfits" in small.candidates["logistic+isotonic"]["why"]
    # A step-shaped pass probability in one signal: a sigmoid cannot follow it, isotonic can.
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 4000)
    p = np.where(x < 0.3, 0.05, np.where(x < 0.7, 0.5, 0.95))
    yy = (rng.uniform(size=x.size) < p).astype(int)
    g = np.array([f"r{i}" for i in range(x.size)])
    big = choose_method(x[:, None], yy, g, min_isotonic_samples=1000)
    assert big.method in ("isotonic", "logistic+isotonic")
    assert big.candidates[big.method]["log_loss"] < big.candidates["logistic"]["log_loss"]


def test_ece_of_known_cases():
    assert ece(np.array([0.25] * 4), np.array([1, 0, 0, 0])) == pytest.approx(0.0)
    assert ece(np.array([1.0, 1.0]), np.array([0, 0])) == pytest.approx(1.0)
    assert ece(np.array([0.05, 0.95]), np.array([0, 1])) == pytest.approx(0.05)


def test_fitting_one_outcome_only_is_a_clear_error():
    X, _, groups = _data(40)
    with pytest.raises(InputError, match="both outcomes"):
        fit_estimator(X, np.ones(40, dtype=int), "logistic", groups=groups)


def test_the_runtime_calibrator_imports_no_training_stack():
    import subprocess
    import sys

    code = (
        "import sys, ade_runtime.predictors.calibration as c; "
        "bad = [m for m in ('sklearn', 'lightning', 'wandb', 'ade_train') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
