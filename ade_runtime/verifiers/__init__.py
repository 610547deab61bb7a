"""Online verifiers: the protocol, the cheap scorers, VLM reward models and the cascade between them.

See ``base.py`` for the protocol and docs/verifiers.md for the options and what each call costs.
"""

from ade_runtime.verifiers.base import ScorerVerifier, Verdict, Verifier, VerifierCost, finite_scores
from ade_runtime.verifiers.factory import SPEC_FORMS, load_verifier

VLM_FEATURE = "vlm"  # the calibrator feature an expensive (VLM reward model) verifier writes

__all__ = [
    "SPEC_FORMS",
    "VLM_FEATURE",
    "ScorerVerifier",
    "Verdict",
    "Verifier",
    "VerifierCost",
    "finite_scores",
    "load_verifier",
]
