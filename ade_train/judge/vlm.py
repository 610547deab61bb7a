"""Judge with a local vision-language model through transformers (Qwen2-VL / Qwen2.5-VL family).

Asks the VIEScore questions of ``viescore.py`` (SC with source + edited image, PQ with the edited
image) and decodes greedily, several attempts per ``generate`` call (left padding).

Inputs are built from the tokenizer and the image processor rather than ``AutoProcessor``:
``Qwen2VLProcessor`` requires a video processor, which needs torchvision, not an ADE dependency.
The expansion of each ``<|image_pad|>`` into ``grid_t * grid_h * grid_w / merge_size**2`` copies
and ``mm_token_type_ids`` (1 on image tokens) follow ``transformers/models/qwen2_vl/
processing_qwen2_vl.py`` (``replace_image_token``) and ``ProcessorMixin.create_mm_token_type_ids``.
The chat layout is Qwen's ChatML (``<|im_start|>user ... <|im_end|>``).

Boxes: Qwen2.5-VL grounds in absolute pixels of the resized input image, Qwen2-VL on 0..1000;
``box_format="auto"`` picks by ``config.model_type`` and normalises with the size the model saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.errors import BackboneUnavailableError, InputError

from .base import JudgeFailure, JudgeItem, JudgeResult, Usage
from .viescore import BOX_FORMATS, DEFAULT_PASS_THRESHOLD, outcome, questions

IMAGE_PAD = "<|image_pad|>"
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass
class VLMJudgeConfig:
    """Settings of a local VLM judge (``--judge vlm:<id or path>``)."""

    model: str  # hub id or local directory (config.json, tokenizer, preprocessor_config.json, weights)
    batch_size: int = 4  # attempts per generate call (each attempt asks two questions)
    max_new_tokens: int = 256
    pass_threshold: float = DEFAULT_PASS_THRESHOLD  # pass when O/10 >= this
    box_format: str = "auto"  # "auto" (by model type), "pixels", "norm1000" or "unit"
    max_pixels: int = 512 * 28 * 28  # image processor budget per image (controls visual tokens)
    min_pixels: int = 4 * 28 * 28

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
        self.model, self.tokenizer, self.image_processor, self.config = (
            model,
            tokenizer,
            image_processor,
            config,
        )
        self.name = f"vlm:{config.model}"
        self.tokenizer.padding_side = "left"  # decoder-only batching generates after the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = int(
            getattr(model.config, "image_token_id", tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        )
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self.patch = int(getattr(image_processor, "patch_size", 14))
        mtype = getattr(model.config, "model_type", "")
        if config.box_format != "auto":
            self.box_format = config.box_format
        else:
            self.box_format = "norm1000" if mtype == "qwen2_vl" else "pixels"

    @classmethod
    def from_pretrained(cls, config: VLMJudgeConfig, runtime: VLMRuntime | None = None) -> VLMJudge:
        runtime = runtime or VLMRuntime()
        try:
            import torch
            from transformers import (
                AutoConfig,
                AutoImageProcessor,
                AutoModelForImageTextToText,
                AutoTokenizer,
            )
        except ImportError as exc:
            raise BackboneUnavailableError(
                "the vlm judge needs transformers: pip install 'ade-adaptive[diffusers]'"
            ) from exc
        try:
            mtype = getattr(AutoConfig.from_pretrained(config.model), "model_type", "")
            if mtype not in SUPPORTED_MODEL_TYPES:
                raise InputError(
                    f"vlm judge: {config.model!r} is a {mtype!r} model; the judge builds Qwen2-VL-family "
                    f"inputs and supports {', '.join(SUPPORTED_MODEL_TYPES)} (serve other models behind an "
                    "OpenAI-compatible server and use --judge openai:<model>)"
                )
            tok = AutoTokenizer.from_pretrained(config.model)
            ip = AutoImageProcessor.from_pretrained(
                config.model, min_pixels=config.min_pixels, max_pixels=config.max_pixels
            )
            dtype = getattr(torch, runtime.dtype) if runtime.dtype else "auto"
            model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(
                f"vlm judge: cannot load {config.model!r} ({exc}); give a local directory or a hub id "
                "that is in the local cache (HF_HUB_OFFLINE=1 forbids downloads)"
            ) from exc
        model.to(runtime.device).eval()
        return cls(model, tok, ip, config)

    def _prompt_text(self, question: str, n_images: int) -> str:
        return f"<|im_start|>user\n{VISION * n_images}{question}<|im_end|>\n<|im_start|>assistant\n"

    def _generate(
        self, prompts: list[tuple[str, list[Image.Image]]]
    ) -> tuple[list[str], list[tuple[int, int]], int, int]:
        """Answer texts, the (height, width) in pixels the model saw of each prompt's last image, tokens."""
        import torch

        images = [im.convert("RGB") for _, ims in prompts for im in ims]
        vis = self.image_processor(images=images, return_tensors="pt")
        grid = vis["image_grid_thw"]
        texts, seen, k = [], [], 0
        for question, ims in prompts:
            parts = self._prompt_text(question, len(ims)).split(IMAGE_PAD)
            text = parts[0]
            for part in parts[1:]:
                text += IMAGE_PAD * int(grid[k].prod().item() // self.merge**2) + part
                k += 1
            seen.append((int(grid[k - 1][1]) * self.patch, int(grid[k - 1][2]) * self.patch))
            texts.append(text)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).int()
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in enc.items()}
        inputs["pixel_values"] = vis["pixel_values"].to(device, next(self.model.parameters()).dtype)
        inputs["image_grid_thw"] = grid.to(device)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        answers = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        n_in = int(enc["attention_mask"].sum())
        n_out = int((new != self.tokenizer.pad_token_id).sum())
        return answers, seen, n_in, n_out

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
            prompts: list[tuple[str, list[Image.Image]]] = []
            for j in ok:
                it = items[j]
                prompts.extend(questions(it.instruction, it.source, it.output, self.box_format))
            t0 = time.monotonic()
            answers, seen, n_in, n_out = self._generate(prompts)
            # One generate call answers the whole batch: spread its cost evenly over the attempts.
            share = Usage(
                calls=1,
                seconds=(time.monotonic() - t0) / len(ok),
                tokens_in=n_in // len(ok),
                tokens_out=n_out // len(ok),
            )
            for n, j in enumerate(ok):
                usage = Usage(1 if n == 0 else 0, share.seconds, share.tokens_in, share.tokens_out)
                h, w = seen[2 * n]
                results[j] = outcome(
                    items[j].ref,
                    [answers[2 * n], answers[2 * n + 1]],
                    usage,
                    pass_threshold=self.config.pass_threshold,
                    box_format=self.box_format,
                    width=w,
                    height=h,
                )
        return [r for r in results if r is not None]
