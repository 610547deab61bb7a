"""An EMULATED VLM reward model for the testbed: the judge's score seen through calibrated noise.

No real vision-language reward model runs on this machine, so the testbed stands one in: it reads
the scene of an attempt (testbed images carry it), scores it with the testbed's ground-truth judge,
adds Gaussian noise and clips to [0, 1], like a VIEScore O/10 or a normalised EditScore. The noise is
deterministic in (attempt image, instruction), as a greedily decoded VLM is. It is an EMULATION: its
numbers stand for what a reward model of a given accuracy would do, never for a real model's.

Its two knobs and the published figures they stand for:

- **accuracy** (``noise_sd``). ``DEFAULT_NOISE_SD`` is set so that the emulation agrees with the judge
  on ``DEFAULT_PAIRWISE_ACCURACY`` = 65.9% of the pairs of attempts of one request whose judge scores
  differ by at least 0.05 (measured on 40 testbed requests x 64 attempts, seed 0, with ``noise_for_accuracy``; a
  test re-measures it on the fixture). 65.9% is EditScore-7B's overall pairwise accuracy on
  EditReward-Bench, one pass (EditScore README, github.com/VectorSpaceLab/EditScore, arXiv:2509.23909;
  the same table: Qwen2.5-VL-7B with VIEScore-style prompts 43.2%, EditScore-72B 70.3%, GPT-5 75.5%).
  EditReward-Bench's pairs are harder than the testbed's (close calls between strong editors), so the
  emulation is, if anything, pessimistic about a 7B reward model on the testbed's pairs.
  ``EmulatedRewardModel.for_accuracy`` gives the noise of any other accuracy, for sensitivity runs
  (70.3%: ``noise_sd`` 0.341; 72.7%, EditScore-7B Avg@4 at 4x the cost: 0.284).
- **cost** (``seconds_per_call``, ``flops_per_call``). ``DEFAULT_SECONDS`` = 1.0 GPU-second per call
  (the order of magnitude quoted for a 7B VLM judging an edit; no published per-call figure for a
  7B VLM on an A100/H100 was found (docs/verifiers.md), so this is an assumption, not a measurement). The FLOPs are the dense-transformer count of a 7.6B model (Qwen2.5-VL-7B) over
  2 images x 1,024 visual tokens + 300 prompt tokens prefilled and 100 tokens decoded:
  2 x 7.6e9 x 2,448 = 3.7e13 FLOPs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ade_runtime.errors import InputError
from ade_runtime.testbed.imageio import CHUNK_KEY, read_scenes
from ade_runtime.testbed.judge import judge_scenes
from ade_runtime.verifiers.base import Verdict, VerifierCost

DEFAULT_PAIRWISE_ACCURACY = 0.659
DEFAULT_NOISE_SD = 0.4327  # gives DEFAULT_PAIRWISE_ACCURACY on the testbed (see the module doc)
DEFAULT_SECONDS = 1.0
QWEN25_VL_7B_PARAMS = 7.6e9
DEFAULT_FLOPS = 2 * QWEN25_VL_7B_PARAMS * (2 * 1024 + 300 + 100)
PAIR_MARGIN = 0.05  # judge-score gap below which a pair counts as a tie (left out of the accuracy)


def _noise(seed_bytes: bytes, sd: float) -> float:
    seed = int.from_bytes(hashlib.blake2b(seed_bytes, digest_size=8).digest(), "little")
    return float(np.random.default_rng(seed).normal(0.0, sd)) if sd > 0 else 0.0


def emulated_score(judge_score: float, content: bytes, noise_sd: float = DEFAULT_NOISE_SD) -> float:
    """The emulation's score of an attempt whose ground-truth judge score is ``judge_score``;
    ``content`` identifies the attempt (its scene) and the instruction, so the answer is repeatable."""
    return float(min(1.0, max(0.0, judge_score + _noise(b"vlm/" + content, noise_sd))))


@dataclass
class EmulatedRewardModel:
    """``Verifier`` for testbed images: ``{feature: judge score + noise}`` at a modelled cost per call."""

    noise_sd: float = DEFAULT_NOISE_SD
    seconds_per_call: float = DEFAULT_SECONDS
    flops_per_call: float = DEFAULT_FLOPS
    feature: str = "vlm"
    name: str = "emulated-vlm"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_sd) and self.noise_sd >= 0):
            raise InputError(f"EmulatedRewardModel.noise_sd must be >= 0, got {self.noise_sd!r}")
        self.cost = VerifierCost(
            self.seconds_per_call,
            self.flops_per_call,
            source="testbed emulation: assumed 1 GPU-s per call for a 7B VLM (ade_runtime/testbed/reward.py)",
        )

    @classmethod
    def for_accuracy(cls, accuracy: float, **kw) -> EmulatedRewardModel:
        """The emulation whose pairwise accuracy against the judge is about ``accuracy``."""
        return cls(noise_sd=noise_for_accuracy(accuracy), **kw)

    def score_scene(self, scene_key: str, judge_score: float, instruction: str) -> float:
        return emulated_score(judge_score, scene_key.encode() + b"\0" + instruction.encode(), self.noise_sd)

    def verify(self, source: Image.Image, attempt: Image.Image, instruction: str) -> Verdict:
        try:
            current, src_scene = read_scenes(attempt, "attempt image")
        except InputError as exc:
            raise InputError(
                f"{exc}; the emulated reward model only reads testbed images (use a real verifier: "
                "--verifier vlm:<id> | openai:<model> | editscore:<id>)"
            ) from None
        judge = judge_scenes(current, src_scene, instruction)
        value = self.score_scene(str(attempt.info.get(CHUNK_KEY)), judge.score, instruction)
        return Verdict({self.feature: value}, seconds=self.cost.seconds, flops=self.cost.flops)


# ---- accuracy against the judge -----------------------------------------------------------------


def pairwise_accuracy(
    truth: Sequence[float], predicted: Sequence[float], groups: Sequence[str], margin: float = PAIR_MARGIN
) -> tuple[float, int]:
    """(share of within-group pairs ordered as ``truth`` orders them, number of pairs): pairs whose
    true scores differ by less than ``margin`` are ties and left out; a predicted tie counts half."""
    by: dict[str, list[tuple[float, float]]] = {}
    for t, p, g in zip(truth, predicted, groups, strict=True):
        by.setdefault(g, []).append((float(t), float(p)))
    agree = 0.0
    n = 0
    for items in by.values():
        t = np.array([x[0] for x in items])
        p = np.array([x[1] for x in items])
        dt = t[:, None] - t[None, :]
        dp = p[:, None] - p[None, :]
        upper = np.triu(np.ones_like(dt, dtype=bool), 1) & (np.abs(dt) >= margin)
        n += int(upper.sum())
        agree += float((np.sign(dt[upper]) == np.sign(dp[upper])).sum()) + 0.5 * float((dp[upper] == 0).sum())
    return (agree / n if n else float("nan")), n


def _sample(n_requests: int = 40, seed: int = 0) -> tuple[list[float], list[bytes], list[str]]:
    """(judge score, content, request) of every attempt of ``n_requests`` testbed requests over the
    full default grid (all rounds and reasoning levels, as the traces hold them)."""
    from ade_runtime.testbed.generate import GenConfig, simulate_request

    cfg = GenConfig(n_requests=n_requests, seed=seed, image_every=1, reward_model=False)
    scores, contents, groups = [], [], []
    for i in range(n_requests):
        rec, images = simulate_request(cfg, i, keep_images=True)
        for a in rec.attempts:
            scores.append(float(a.judge.score))
            contents.append(str(images[a.image].info[CHUNK_KEY]).encode() + b"\0" + rec.instruction.encode())
            groups.append(rec.id)
    return scores, contents, groups


def accuracy_of(noise_sd: float, sample=None) -> float:
    scores, contents, groups = sample or _sample()
    noisy = [emulated_score(s, c, noise_sd) for s, c in zip(scores, contents, strict=True)]
    return pairwise_accuracy(scores, noisy, groups)[0]


def noise_for_accuracy(accuracy: float, sample=None) -> float:
    """The noise s.d. whose pairwise accuracy against the judge is ``accuracy`` (bisection)."""
    if not 0.5 < accuracy <= 1.0:
        raise InputError(f"accuracy must be in (0.5, 1], got {accuracy!r}")
    sample = sample or _sample()
    lo, hi = 0.0, 3.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if accuracy_of(mid, sample) > accuracy:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 4)
