"""Judge with a local vision-language model through transformers (Qwen2-VL / Qwen2.5-VL family).

The inference (inputs built from the tokenizer and the image processor, visual-token expansion,
batched greedy ``generate``, the box convention per model type) is ``ade_runtime.verifiers.qwen.
QwenVL``, shared with the runtime's ``QwenVLVerifier``; this module turns its answers into labels
or recorded failures, several attempts per ``generate`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ade_runtime.errors import InputError
from ade_runtime.verifiers.qwen import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, SUPPORTED_MODEL_TYPES, QwenVL

from .base import JudgeFailure, JudgeItem, JudgeResult, Usage
from .viescore import BOX_FORMATS, DEFAULT_PASS_THRESHOLD, outcome, questions

__all__ = ["SUPPORTED_MODEL_TYPES", "VLMJudge", "VLMJudgeConfig", "VLMRuntime"]


@dataclass
class VLMJudgeConfig:
    """Settings of a local VLM judge (``--judge vlm:<id or path>``)."""

    model: str  # hub id or local directory (config.json, tokenizer, preprocessor_config.json, weights)
    batch_size: int = 4  # attempts per generate call (each attempt asks two questions)
    max_new_tokens: int = 256
    pass_threshold: float = DEFAULT_PASS_THRESHOLD  # pass when O/10 >= this
    box_format: str = "auto"  # "auto" (by model type), "pixels", "norm1000" or "unit"
    max_pixels: int = DEFAULT_MAX_PIXELS  # image processor budget per image (controls visual tokens)
    min_pixels: int = DEFAULT_MIN_PIXELS

    def __post_init__(self) -> None:
        if not self.model:
            raise InputError("vlm judge: the model is empty; use --judge vlm:<hub id or local path>")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise InputError("vlm judge: batch_size and max_new_tokens must be >= 1")
        if not 0.0 <= self.pass_threshold <= 1.0:
            raise InputError(f"vlm judge: pass_threshold must be in [0, 1], got {self.pass_threshold}")
        if self.box_format != "auto" and self.box_format not in BOX_FORMATS:
            raise InputError(
                f"vlm judge: box_format must be 'auto' or one of {BOX_FORMATS}, got {self.box_format!r}"
            )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise InputError("vlm judge: need 0 < min_pixels <= max_pixels")


@dataclass
class VLMRuntime:
    """Never saved: where and how the model runs."""

    device: str = "cpu"
    dtype: str | None = None  # "bfloat16", "float16", "float32"; None = the checkpoint's


class VLMJudge:
    """VIEScore judge on a Qwen2-VL-family model; build with ``from_pretrained`` or from parts."""

    needs_images = True
    thread_safe = False  # one model, one generate at a time: the run driver uses a single worker

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, config: VLMJudgeConfig) -> None:
        self.config = config
        self.name = f"vlm:{config.model}"
        self.vlm = QwenVL(model, tokenizer, image_processor, config.box_format)
        self.box_format = self.vlm.box_format

    @classmethod
    def from_pretrained(cls, config: VLMJudgeConfig, runtime: VLMRuntime | None = None) -> VLMJudge:
        runtime = runtime or VLMRuntime()
        vlm = QwenVL.from_pretrained(
            config.model,
            device=runtime.device,
            dtype=runtime.dtype,
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
            who="vlm judge",
            other="--judge openai:<model>",
        )
        return cls(vlm.model, vlm.tokenizer, vlm.image_processor, config)

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        out: list[JudgeResult | JudgeFailure] = []
        for i in range(0, len(items), self.config.batch_size):
            out.extend(self._judge_batch(items[i : i + self.config.batch_size]))
        return out

    def _judge_batch(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        results: list[JudgeResult | JudgeFailure | None] = [None] * len(items)
        ok = []
        for j, it in enumerate(items):
            if it.source is None or it.output is None:
                results[j] = JudgeFailure(
                    it.ref, "no_image", "the VLM judge needs the source and output images"
                )
            else:
                ok.append(j)
        if ok:
            prompts = []
            for j in ok:
                it = items[j]
                prompts.extend(questions(it.instruction, it.source, it.output, self.box_format))
            gen = self.vlm.generate(prompts, self.config.max_new_tokens)
            # One generate call answers the whole batch: spread its cost evenly over the attempts.
            share = Usage(
                calls=1,
                seconds=gen.seconds / len(ok),
                tokens_in=gen.tokens_in // len(ok),
                tokens_out=gen.tokens_out // len(ok),
            )
            for n, j in enumerate(ok):
                usage = Usage(1 if n == 0 else 0, share.seconds, share.tokens_in, share.tokens_out)
                h, w = gen.seen[2 * n]
                results[j] = outcome(
                    items[j].ref,
                    [gen.answers[2 * n], gen.answers[2 * n + 1]],
                    usage,
                    pass_threshold=self.config.pass_threshold,
                    box_format=self.box_format,
                    width=w,
                    height=h,
                )
        return [r for r in results if r is not None]
