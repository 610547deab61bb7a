"""The synthetic edit world: a CPU TESTBED with known ground truth (never results on real models).

Scenes of coloured shapes, instructions in ImgEdit/GEdit categories with an exact target scene,
a simulated backbone with realistic failure modes and costs, a ground-truth judge and cheap
pixel scores, and a generator of format-v1 traces. See docs/testbed.md.
"""

from ade_runtime.testbed.backbone import FailureModel, SyntheticBackbone
from ade_runtime.testbed.costs import COSTS, BackboneCost, get_cost
from ade_runtime.testbed.imageio import CHUNK_KEY, load_png, make_image, read_scenes, save_png
from ade_runtime.testbed.instructions import CATEGORIES, Edit, Ref, parse, phrase
from ade_runtime.testbed.judge import PASS_THRESHOLD, judge_attempt, online_scores
from ade_runtime.testbed.scene import Obj, Scene, render
from ade_runtime.testbed.world import Request, World, apply_edits

__all__ = [
    "CATEGORIES",
    "CHUNK_KEY",
    "COSTS",
    "PASS_THRESHOLD",
    "BackboneCost",
    "Edit",
    "FailureModel",
    "Obj",
    "Ref",
    "Request",
    "Scene",
    "SyntheticBackbone",
    "World",
    "apply_edits",
    "get_cost",
    "judge_attempt",
    "load_png",
    "make_image",
    "online_scores",
    "parse",
    "phrase",
    "read_scenes",
    "render",
    "save_png",
]
