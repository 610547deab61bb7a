"""Judge through an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, LiteLLM, ...).

Two VIEScore questions per attempt (``viescore.py``), images sent inline as base64 PNG data URLs.
Standard library only (urllib): retries with exponential backoff on 429, 5xx and timeouts (a
``Retry-After`` header is honoured up to ``max_backoff_s``), a client-side rate limit in requests
per second shared by all worker threads, a per-request timeout. A malformed answer or an error
that outlives its retries becomes a ``JudgeFailure``; the run never crashes on the judge's account.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.errors import InputError

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


class _RateLimiter:
    """Spaces request starts at least 1/rps seconds apart across threads."""

    def __init__(self, rps: float) -> None:
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if self.interval == 0.0:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            time.sleep(start - now)


class _CallError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def data_url(img: Image.Image, max_side: int) -> str:
    """A PNG data URL of ``img``, downscaled so the longer side is at most ``max_side``."""
    img = img.convert("RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIJudge:
    """VIEScore judge over HTTP. Thread-safe: the run driver may call ``judge`` from several workers."""

    needs_images = True

    def __init__(self, config: OpenAIJudgeConfig) -> None:
        self.config = config
        self.name = f"openai:{config.model}"
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._limiter = _RateLimiter(config.rps)

    def _post(self, body: dict[str, Any], usage: Usage) -> str:
        """One chat completion with retries; returns the answer text or raises _CallError."""
        cfg = self.config
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        last = _CallError("http_error", "no attempt made")
        for attempt in range(cfg.max_retries + 1):
            self._limiter.wait()
            usage.calls += 1
            t0 = time.monotonic()
            retry_after: float | None = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                    payload = resp.read()
                usage.seconds += time.monotonic() - t0
                return self._answer_text(payload, usage)
            except urllib.error.HTTPError as exc:
                usage.seconds += time.monotonic() - t0
                detail = exc.read()[:200].decode("utf-8", "replace")
                last = _CallError("http_error", f"HTTP {exc.code} from {self.url}: {detail}")
                if exc.code != 429 and exc.code < 500:
                    raise last from None  # 4xx other than 429: the request is wrong, retrying will not help
                ra = exc.headers.get("Retry-After") if exc.headers else None
                retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            except TimeoutError as exc:
                usage.seconds += time.monotonic() - t0
                last = _CallError("timeout", f"no answer from {self.url} within {cfg.timeout_s}s ({exc})")
            except urllib.error.URLError as exc:
                usage.seconds += time.monotonic() - t0
                reason = "timeout" if isinstance(exc.reason, TimeoutError) else "http_error"
                last = _CallError(reason, f"cannot reach {self.url}: {exc.reason}")
            except (ConnectionError, OSError) as exc:
                usage.seconds += time.monotonic() - t0
                last = _CallError("http_error", f"connection to {self.url} failed: {exc}")
            if attempt < cfg.max_retries:
                delay = cfg.backoff_s * (2**attempt) if retry_after is None else retry_after
                time.sleep(min(delay, cfg.max_backoff_s))
        raise last

    @staticmethod
    def _answer_text(payload: bytes, usage: Usage) -> str:
        try:
            obj = json.loads(payload)
            text = obj["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _CallError("malformed", f"response is not a chat completion: {payload[:200]!r}") from exc
        u = obj.get("usage") or {}
        if isinstance(u.get("prompt_tokens"), int):
            usage.tokens_in = (usage.tokens_in or 0) + u["prompt_tokens"]
        if isinstance(u.get("completion_tokens"), int):
            usage.tokens_out = (usage.tokens_out or 0) + u["completion_tokens"]
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if not isinstance(text, str):
            raise _CallError("malformed", "the message content is not text")
        return text

    def _body(self, prompt: str, images: list[Image.Image]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": data_url(im, self.config.image_max_side)}}
            for im in images
        ]
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }

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
                raw.append(self._post(self._body(prompt, images), usage))
                if not well_formed(raw[-1]):
                    break  # a malformed SC answer: PQ would not make a label, do not pay for it
        except _CallError as exc:
            return JudgeFailure(item.ref, exc.reason, exc.message, usage, "\n---\n".join(raw) or None)
        return outcome(
            item.ref, raw, usage, pass_threshold=self.config.pass_threshold, box_format=self.config.box_format
        )

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult | JudgeFailure]:
        return [self.judge_one(it) for it in items]
