"""Judge through an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, LiteLLM, ...).

Two VIEScore questions per attempt (``viescore.py``) through ``ade_runtime.verifiers.http.
ChatClient`` (standard library only, shared with the runtime's ``OpenAIVerifier``): images inline
as base64 PNG data URLs, retries with exponential backoff on 429, 5xx and timeouts (``Retry-After``
honoured up to ``max_backoff_s``), a client-side rate limit in requests per second shared by all
worker threads, a per-request timeout. A malformed answer or an error that outlives its retries
becomes a ``JudgeFailure``; the run never crashes on the judge's account.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from ade_runtime.errors import InputError
from ade_runtime.verifiers.http import CallError, ChatClient

from .base import JudgeFailure, JudgeItem, JudgeResult, Usage
from .viescore import BOX_FORMATS, DEFAULT_PASS_THRESHOLD, outcome, questions, well_formed


@dataclass
class OpenAIJudgeConfig:
    """Settings of an API judge; ``base_url`` / ``api_key`` default to OPENAI_BASE_URL / OPENAI_API_KEY."""

    model: str
    base_url: str | None = None  # e.g. https://api.openai.com/v1 (".../chat/completions" is appended)
    api_key: str | None = None  # sent as "Authorization: Bearer ..."; may be empty for local servers
    timeout_s: float = 60.0  # per HTTP request
    max_retries: int = 4  # extra tries after the first, on 429 / 5xx / timeouts / connection errors
    backoff_s: float = 1.0  # first backoff; doubles per retry
    max_backoff_s: float = 30.0  # cap of one backoff, Retry-After included
    rps: float = 2.0  # requests per second across all threads; 0 disables the limit
    max_tokens: int = 512  # answer budget per question
    temperature: float = 0.0
    pass_threshold: float = DEFAULT_PASS_THRESHOLD  # pass when O/10 >= this
    box_format: str = "unit"  # how the model is asked to give boxes (see viescore.py)
    image_max_side: int = 1024  # longer side of images sent; larger ones are downscaled

    def __post_init__(self) -> None:
        if not self.model:
            raise InputError("openai judge: the model name is empty; use --judge openai:<model>")
        self.base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY", "")
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"openai judge: base_url {self.base_url!r} must start with http:// or https://")
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if getattr(self, name) <= 0:
                raise InputError(f"openai judge: {name} must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0 or self.rps < 0 or self.max_tokens < 1 or self.image_max_side < 16:
            raise InputError(
                "openai judge: max_retries >= 0, rps >= 0, max_tokens >= 1, image_max_side >= 16"
            )
        if not 0.0 <= self.pass_threshold <= 1.0:
            raise InputError(f"openai judge: pass_threshold must be in [0, 1], got {self.pass_threshold}")
        if self.box_format not in BOX_FORMATS:
            raise InputError(
                f"openai judge: box_format must be one of {BOX_FORMATS}, got {self.box_format!r}"
            )


class OpenAIJudge:
    """VIEScore judge over HTTP. Thread-safe: the run driver may call ``judge`` from several workers."""

    needs_images = True

    def __init__(self, config: OpenAIJudgeConfig) -> None:
        self.config = config
        self.name = f"openai:{config.model}"
        self.client = ChatClient(
            config.base_url,
            config.model,
            config.api_key or "",
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
            max_backoff_s=config.max_backoff_s,
            rps=config.rps,
            image_max_side=config.image_max_side,
            who="openai judge",
        )
        self.url = self.client.url

    def _post(self, prompt: str, images: list[Image.Image], usage: Usage) -> str:
        """One chat completion with retries, its cost added to ``usage``; raises ``CallError``."""
        body = self.client.body(prompt, images, self.config.max_tokens, self.config.temperature)
        try:
            reply = self.client.complete(body)
        except CallError as exc:
            usage.calls += exc.calls
            usage.seconds += exc.seconds
            raise
        usage.calls += reply.calls
        usage.seconds += reply.seconds
        if reply.tokens_in is not None:
            usage.tokens_in = (usage.tokens_in or 0) + reply.tokens_in
        if reply.tokens_out is not None:
            usage.tokens_out = (usage.tokens_out or 0) + reply.tokens_out
        return reply.text

    def judge_one(self, item: JudgeItem) -> JudgeResult | JudgeFailure:
        usage = Usage()
        raw: list[str] = []
        if item.source is None or item.output is None:
            return JudgeFailure(
                item.ref, "no_image", "the API judge needs the source and output images", usage
            )
        try:
            for prompt, images in questions(
                item.instruction, item.source, item.output, self.config.box_format
            ):
                raw.append(self._post(prompt, images, usage))
                if not well_formed(raw[-1]):
                    break  # a malformed SC answer: PQ would not make a label, do not pay for it
        except CallError as exc:
            return JudgeFailure(item.ref, exc.reason, exc.message, usage, "\n---\n".join(raw) or None)
        return outcome(
            item.ref, raw, usage, pass_threshold=self.config.pass_threshold, box_format=self.config.box_format
        )

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        return [self.judge_one(it) for it in items]
