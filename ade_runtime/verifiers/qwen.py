"""VIEScore on a local Qwen2-VL / Qwen2.5-VL through transformers: the model, its inputs, the verifier.

``QwenVL`` is the inference shared by ``ade-judge``'s VLM judge and the runtime's
``QwenVLVerifier``: it asks the VIEScore questions of ``viescore.py`` (SC with source + edited
image, PQ with the edited image) and decodes greedily, several prompts per ``generate`` call
(left padding).

Inputs are built from the tokenizer and the image processor rather than ``AutoProcessor``:
``Qwen2VLProcessor`` requires a video processor, which needs torchvision, not an ADE dependency.
The expansion of each ``<|image_pad|>`` into ``grid_t * grid_h * grid_w / merge_size**2`` copies
and ``mm_token_type_ids`` (1 on image tokens) follow ``transformers/models/qwen2_vl/
processing_qwen2_vl.py`` (``replace_image_token``) and ``ProcessorMixin.create_mm_token_type_ids``.
The chat layout is Qwen's ChatML (``<|im_start|>user ... <|im_end|>``).

Boxes: Qwen2.5-VL grounds in absolute pixels of the resized input image, Qwen2-VL on 0..1000;
``box_format="auto"`` picks by ``config.model_type``; ``generate`` returns the size the model saw.

Cost: a verifier call reports its measured wall seconds (or the modelled ``VerifierCost`` when one
is given) and FLOPs estimated as 2 x parameters x (prompt + generated tokens), the usual
dense-transformer forward estimate; it ignores attention's quadratic term and the KV cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.errors import BackboneUnavailableError, InputError
from ade_runtime.verifiers import VLM_FEATURE
from ade_runtime.verifiers.base import Verdict, VerifierCost
from ade_runtime.verifiers.metering import CostMeter, Metered
from ade_runtime.verifiers.viescore import BOX_FORMATS, questions, verdict_from_answers

IMAGE_PAD = "<|image_pad|>"
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_MAX_PIXELS = 512 * 28 * 28  # image processor budget per image (controls visual tokens)
DEFAULT_MIN_PIXELS = 4 * 28 * 28


@dataclass
class Generation:
    """What one ``generate`` call answered and used."""

    answers: list[str]  # one answer text per prompt, in order
    seen: list[tuple[int, int]]  # (height, width) in pixels the model saw of each prompt's last image
    tokens_in: int  # prompt tokens (padding excluded)
    tokens_out: int  # generated tokens (padding excluded)
    seconds: float  # wall time of the call


class QwenVL:
    """A Qwen2-VL-family model with its tokenizer and image processor; build with ``from_pretrained``."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, box_format: str = "auto") -> None:
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.tokenizer.padding_side = "left"  # decoder-only batching generates after the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = int(
            getattr(model.config, "image_token_id", tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        )
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self.patch = int(getattr(image_processor, "patch_size", 14))
        if box_format == "auto":
            box_format = "norm1000" if getattr(model.config, "model_type", "") == "qwen2_vl" else "pixels"
        if box_format not in BOX_FORMATS:
            raise InputError(f"box_format must be 'auto' or one of {BOX_FORMATS}, got {box_format!r}")
        self.box_format = box_format
        self.n_params = sum(int(p.numel()) for p in model.parameters())

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        box_format: str = "auto",
        who: str = "vlm verifier",
        other: str = "--verifier openai:<model>",
    ) -> QwenVL:
        """Load a hub id (from the local cache) or a local directory; ``who``/``other`` word the errors."""
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
                f"the {who} needs transformers: pip install 'ade-adaptive[diffusers]'"
            ) from exc
        try:
            mtype = getattr(AutoConfig.from_pretrained(name), "model_type", "")
            if mtype not in SUPPORTED_MODEL_TYPES:
                raise InputError(
                    f"{who}: {name!r} is a {mtype!r} model; ADE builds Qwen2-VL-family inputs and supports "
                    f"{', '.join(SUPPORTED_MODEL_TYPES)} (serve other models behind an OpenAI-compatible "
                    f"server and use {other})"
                )
            tok = AutoTokenizer.from_pretrained(name)
            ip = AutoImageProcessor.from_pretrained(name, min_pixels=min_pixels, max_pixels=max_pixels)
            torch_dtype = getattr(torch, dtype) if dtype else "auto"
            model = AutoModelForImageTextToText.from_pretrained(name, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(
                f"{who}: cannot load {name!r} ({exc}); give a local directory or a hub id "
                "that is in the local cache (HF_HUB_OFFLINE=1 forbids downloads)"
            ) from exc
        model.to(device).eval()
        return cls(model, tok, ip, box_format)

    def _prompt_text(self, question: str, n_images: int) -> str:
        return f"<|im_start|>user\n{VISION * n_images}{question}<|im_end|>\n<|im_start|>assistant\n"

    def generate(self, prompts: list[tuple[str, list[Image.Image]]], max_new_tokens: int) -> Generation:
        """Greedy answers to ``(question, images)`` prompts in one batched ``generate`` call."""
        import torch

        t0 = time.monotonic()
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
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        answers = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        n_in = int(enc["attention_mask"].sum())
        n_out = int((new != self.tokenizer.pad_token_id).sum())
        return Generation(answers, seen, n_in, n_out, time.monotonic() - t0)


class QwenVLVerifier(Metered):
    """Expensive verifier: VIEScore O / 10 from a local Qwen2-VL / Qwen2.5-VL (``vlm:<id or path>``).

    ``verify`` asks one attempt's two questions in one ``generate`` call; ``verify_batch`` asks
    ``batch_size`` attempts per call and spreads each call's seconds and FLOPs evenly over them.
    An answer that is not the requested JSON gives a verdict without scores (``detail["failure"]``
    is ``"malformed"``): the call was paid for, the attempt keeps its cheap confidence.
    """

    def __init__(
        self,
        vlm: QwenVL,
        *,
        name: str = "vlm",
        feature: str = VLM_FEATURE,
        cost: VerifierCost | None = None,
        max_new_tokens: int = 256,
        batch_size: int = 4,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise InputError("vlm verifier: max_new_tokens and batch_size must be >= 1")
        if not feature:
            raise InputError("vlm verifier: feature must be a non-empty score name")
        self.vlm, self.name, self.feature = vlm, name, feature
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.meter = CostMeter(cost)  # a modelled cost is charged instead of the measured wall time

    @classmethod
    def from_pretrained(
        cls, name: str, *, device: str = "cpu", dtype: str | None = None, **opts: Any
    ) -> QwenVLVerifier:
        load = {k: opts.pop(k) for k in ("min_pixels", "max_pixels") if k in opts}
        return cls(
            QwenVL.from_pretrained(name, device=device, dtype=dtype, **load), name=f"vlm:{name}", **opts
        )

    def verify(self, source: Image.Image, attempt: Image.Image, instruction: str) -> Verdict:
        return self.verify_batch([(source, attempt, instruction)])[0]

    def verify_batch(self, items: list[tuple[Image.Image, Image.Image, str]]) -> list[Verdict]:
        """One verdict per ``(source, attempt, instruction)``, in order, ``batch_size`` per generate call."""
        out: list[Verdict] = []
        for i in range(0, len(items), self.batch_size):
            out.extend(self._batch(items[i : i + self.batch_size]))
        return out

    def _batch(self, items: list[tuple[Image.Image, Image.Image, str]]) -> list[Verdict]:
        prompts = [q for src, att, instr in items for q in questions(instr, src, att, self.vlm.box_format)]
        gen = self.vlm.generate(prompts, self.max_new_tokens)
        n = len(items)
        seconds = self.meter.charge(gen.seconds, calls=n)
        flops = self.cost.flops
        if flops is None:
            flops = 2.0 * self.vlm.n_params * (gen.tokens_in + gen.tokens_out) / n
        return [
            verdict_from_answers(
                gen.answers[2 * j : 2 * j + 2],
                self.feature,
                seconds,
                flops,
                box_format=self.vlm.box_format,
                height=gen.seen[2 * j][0],
                width=gen.seen[2 * j][1],
                tokens_in=gen.tokens_in // n,
                tokens_out=gen.tokens_out // n,
            )
            for j in range(n)
        ]
