"""An OpenAI-compatible chat-completions client (standard library only) and the verifier on top of it.

``ChatClient`` is shared by ``ade-judge``'s API judge and the runtime's ``OpenAIVerifier`` (OpenAI,
vLLM, SGLang, LiteLLM, EditScore or Qwen served by vLLM, ...). Images go inline as base64 PNG data
URLs. Retries with exponential backoff on 429, 5xx, timeouts and connection errors (a
``Retry-After`` header is honoured up to ``max_backoff_s``); other 4xx are not retried (the request
is wrong, retrying will not help). A client-side rate limit in requests per second is shared by
all threads using one client.

Cost of an ``OpenAIVerifier`` call: the measured wall seconds of its requests (or the modelled
``VerifierCost`` when given); FLOPs = 2 x ``params`` x (prompt + completion tokens) when the
model's parameter count is given and the server reports token usage, else unknown.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ade_runtime.errors import InputError, VerifierError
from ade_runtime.images import image_bytes
from ade_runtime.verifiers import VLM_FEATURE
from ade_runtime.verifiers.base import Verdict, VerifierCost
from ade_runtime.verifiers.metering import CostMeter, Metered
from ade_runtime.verifiers.viescore import BOX_FORMATS, questions, verdict_from_answers, well_formed


class RateLimiter:
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


class CallError(Exception):
    """A chat completion that failed for good; ``reason`` is ``http_error``, ``timeout`` or ``malformed``.

    ``calls`` and ``seconds`` are what the tries cost before giving up.
    """

    def __init__(self, reason: str, message: str, calls: int = 0, seconds: float = 0.0) -> None:
        super().__init__(message)
        self.reason, self.message, self.calls, self.seconds = reason, message, calls, seconds


@dataclass
class Reply:
    """One chat completion's answer text and what it cost (all tries included)."""

    text: str
    calls: int
    seconds: float
    tokens_in: int | None = None
    tokens_out: int | None = None


def data_url(img: Image.Image, max_side: int) -> str:
    """A PNG data URL of ``img``, downscaled so the longer side is at most ``max_side``."""
    img = img.convert("RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    return "data:image/png;base64," + base64.b64encode(image_bytes(img)).decode("ascii")


class ChatClient:
    """POSTs to ``<base_url>/chat/completions`` with retries; thread-safe."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        *,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        rps: float = 0.0,
        image_max_side: int = 1024,
        who: str = "openai verifier",
    ) -> None:
        if not model:
            raise InputError(f"{who}: the model name is empty")
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"{who}: base_url {base_url!r} must start with http:// or https://")
        for name, value in (
            ("timeout_s", timeout_s),
            ("backoff_s", backoff_s),
            ("max_backoff_s", max_backoff_s),
        ):
            if not value > 0:
                raise InputError(f"{who}: {name} must be > 0, got {value}")
        if max_retries < 0 or rps < 0 or image_max_side < 16:
            raise InputError(f"{who}: need max_retries >= 0, rps >= 0 and image_max_side >= 16")
        self.model, self.api_key = model, api_key
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.image_max_side = image_max_side
        self._limiter = RateLimiter(rps)

    def body(
        self, prompt: str, images: list[Image.Image], max_tokens: int, temperature: float
    ) -> dict[str, Any]:
        """A user message with the images first, then the prompt text."""
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": data_url(im, self.image_max_side)}} for im in images
        ]
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }

    def complete(self, body: dict[str, Any]) -> Reply:
        """One chat completion with retries; the answer text, or ``CallError`` when it failed for good."""
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        calls, seconds = 0, 0.0
        last = ("http_error", "no attempt made")
        for attempt in range(self.max_retries + 1):
            self._limiter.wait()
            calls += 1
            t0 = time.monotonic()
            retry_after: float | None = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = resp.read()
                seconds += time.monotonic() - t0
                return self._reply(payload, calls, seconds)
            except urllib.error.HTTPError as exc:
                seconds += time.monotonic() - t0
                detail = exc.read()[:200].decode("utf-8", "replace")
                last = ("http_error", f"HTTP {exc.code} from {self.url}: {detail}")
                if exc.code != 429 and exc.code < 500:
                    raise CallError(*last, calls, seconds) from None  # the request is wrong: do not retry
                ra = exc.headers.get("Retry-After") if exc.headers else None
                retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            except TimeoutError as exc:
                seconds += time.monotonic() - t0
                last = ("timeout", f"no answer from {self.url} within {self.timeout_s}s ({exc})")
            except urllib.error.URLError as exc:
                seconds += time.monotonic() - t0
                reason = "timeout" if isinstance(exc.reason, TimeoutError) else "http_error"
                last = (reason, f"cannot reach {self.url}: {exc.reason}")
            except (ConnectionError, OSError) as exc:
                seconds += time.monotonic() - t0
                last = ("http_error", f"connection to {self.url} failed: {exc}")
            if attempt < self.max_retries:
                delay = self.backoff_s * (2**attempt) if retry_after is None else retry_after
                time.sleep(min(delay, self.max_backoff_s))
        raise CallError(*last, calls, seconds)

    @staticmethod
    def _reply(payload: bytes, calls: int, seconds: float) -> Reply:
        try:
            obj = json.loads(payload)
            text = obj["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise CallError(
                "malformed", f"response is not a chat completion: {payload[:200]!r}", calls, seconds
            ) from exc
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if not isinstance(text, str):
            raise CallError("malformed", "the message content is not text", calls, seconds)
        u = obj.get("usage") or {}
        t_in, t_out = u.get("prompt_tokens"), u.get("completion_tokens")
        return Reply(
            text,
            calls,
            seconds,
            t_in if isinstance(t_in, int) else None,
            t_out if isinstance(t_out, int) else None,
        )


class OpenAIVerifier(Metered):
    """Expensive verifier: VIEScore O / 10 from any OpenAI-compatible endpoint (``openai:<model>``).

    Two requests per attempt (SC, then PQ; PQ is not asked after a malformed SC answer). ``base_url``
    defaults to ``OPENAI_BASE_URL``, the key to ``OPENAI_API_KEY`` (may be empty for local servers).
    A request that fails for good (4xx, or 429 / 5xx / timeout after ``max_retries``) raises
    ``VerifierError`` naming the URL and the fix; a malformed answer gives a verdict without scores.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        feature: str = VLM_FEATURE,
        cost: VerifierCost | None = None,
        params: float | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        box_format: str = "unit",
        **client: Any,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise InputError(
                "openai verifier: no endpoint; give --verifier-url http://host:port/v1 (or set OPENAI_BASE_URL)"
            )
        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY", "")
        if max_tokens < 1 or not feature or (params is not None and not params > 0):
            raise InputError("openai verifier: need max_tokens >= 1, a non-empty feature and params > 0")
        if box_format not in BOX_FORMATS:
            raise InputError(f"openai verifier: box_format must be one of {BOX_FORMATS}, got {box_format!r}")
        self.client = ChatClient(base_url, model, api_key, **client)
        self.name, self.feature = name or f"openai:{model}", feature
        self.params, self.max_tokens, self.temperature, self.box_format = (
            params,
            max_tokens,
            temperature,
            box_format,
        )
        self.meter = CostMeter(cost)

    def verify(self, source: Image.Image, attempt: Image.Image, instruction: str) -> Verdict:
        texts: list[str] = []
        seconds, calls, tokens = 0.0, 0, [0, 0]
        known = True
        for prompt, images in questions(instruction, source, attempt, self.box_format):
            try:
                reply = self.client.complete(
                    self.client.body(prompt, images, self.max_tokens, self.temperature)
                )
            except CallError as exc:
                seconds += exc.seconds
                raise VerifierError(
                    f"verifier {self.name!r}: {exc.message} (check --verifier-url, the model name and "
                    "OPENAI_API_KEY)",
                    seconds=self.meter.charge(seconds),
                ) from None
            seconds += reply.seconds
            calls += reply.calls
            texts.append(reply.text)
            if reply.tokens_in is None or reply.tokens_out is None:
                known = False
            else:
                tokens[0] += reply.tokens_in
                tokens[1] += reply.tokens_out
            if not well_formed(texts[-1]):
                break  # a malformed SC answer: PQ would not make a score, do not pay for it
        flops = self.cost.flops
        if flops is None and self.params is not None and known:
            flops = 2.0 * self.params * (tokens[0] + tokens[1])
        detail: dict[str, Any] = {"requests": calls}
        if known:
            detail.update(tokens_in=tokens[0], tokens_out=tokens[1])
        charged = self.meter.charge(seconds)
        return verdict_from_answers(texts, self.feature, charged, flops, box_format=self.box_format, **detail)
