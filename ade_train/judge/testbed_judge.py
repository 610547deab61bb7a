"""The synthetic world's exact judge (``ade_runtime.testbed.judge_attempt``) behind the judge protocol.

The testbed knows the ground truth of every synthetic edit, so this judge reproduces exactly the
labels ``ade-testbed generate`` writes. It is how the judging pipeline is tested end to end:
strip the judges from a testbed dataset, judge it again, compare.
"""

from __future__ import annotations

import time

from ade_runtime.errors import InputError

from .base import JudgeFailure, JudgeItem, JudgeResult, Usage


class TestbedJudge:
    """Calls ``judge_attempt(source, output, instruction)`` per attempt; one call = one judge call."""

    __test__ = False  # a pytest collection hint: this class is not a test case
    name = "testbed"
    needs_images = True

    def __init__(self) -> None:
        from ade_runtime.testbed import judge_attempt

        self._judge_attempt = judge_attempt

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        out: list[JudgeResult | JudgeFailure] = []
        for it in items:
            if it.source is None or it.output is None:
                out.append(
                    JudgeFailure(it.ref, "no_image", "the testbed judge needs the source and output images")
                )
                continue
            t0 = time.monotonic()
            try:
                label = self._judge_attempt(it.source, it.output, it.instruction)
            except InputError as exc:
                # The testbed cannot read this scene or instruction (not a synthetic-world image).
                out.append(JudgeFailure(it.ref, "judge_error", str(exc), Usage(1, time.monotonic() - t0)))
                continue
            out.append(JudgeResult(it.ref, label, Usage(calls=1, seconds=time.monotonic() - t0)))
        return out
