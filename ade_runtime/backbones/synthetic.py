"""The synthetic testbed backbone (a CPU TESTBED, not a model); see ``ade_runtime.testbed.backbone``."""

from ade_runtime.testbed.backbone import FailureModel, SyntheticBackbone

__all__ = ["FailureModel", "SyntheticBackbone"]
