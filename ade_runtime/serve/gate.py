"""The ASGI gate in front of ``ade-serve``'s FastAPI app: what happens before LitServe sees a request.

A pure ASGI middleware (Starlette's pattern; it sees the headers before anyone reads the body):

1. **Auth** from the headers alone (``X-API-Key: <key>``, LitServe's header, or
   ``Authorization: Bearer <key>``, TorchServe's), before a byte of the body is read; ``/health``
   and ``/ready`` stay open for probes.
2. **Shedding** (``POST /edit``): when the requests already admitted would make this one wait
   longer than ``--queue-timeout`` (their number per worker times the workers' mean service time),
   or exceed ``--max-queue`` per worker, the answer is 503 with ``Retry-After`` at once, instead
   of holding the connection.
3. **Body**: ``Content-Length`` checked, the body read with a size limit and one overall read
   deadline (``--body-timeout``: a client stalled mid-body gets 408 and its connection closed).
4. **Decoding off the event loop** (a worker thread): JSON or multipart parsed, every field
   bounded (``inputs.check_fields``), the image's header read. The image's bytes go to a file in
   the server's run directory and LitServe gets a small JSON naming it, so neither the event loop
   nor the manager queue ever carries the image.
5. **Disconnects**: while LitServe waits for the worker, the gate listens for the client going
   away and cancels the request's ticket; the worker skips a cancelled request it has not
   started and stops a running one before its next attempt.
6. **Accounting**: ``ade_serve_requests_total{status}`` for ``/edit``; every 500 on any path
   counted in ``ade_serve_internal_errors_total``; an exception escaping the app becomes a JSON
   500 without a traceback.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio.to_thread

from ade_runtime.serve.inputs import BadRequest, Limits, _image_bytes, check_fields, open_image
from ade_runtime.serve.shared import ServeState

log = logging.getLogger("ade_runtime.serve")

OPEN_PATHS = ("/health", "/ready")
MAX_PARTS = 16


class StatusSend:
    """An ASGI ``send`` that passes every message on and remembers the response status (0: none yet)."""

    def __init__(self, send) -> None:
        self.send, self.code = send, 0

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self.send(message)


class EditGate:
    """ASGI middleware: auth, shedding, bounded body, off-loop decoding, disconnects, accounting."""

    def __init__(
        self,
        app,
        *,
        state: ServeState,
        upload_dir: str | Path,
        limits: Limits,
        api_key: str | None = None,
        default_policy: str = "ade",
        base_policy=None,
        body_timeout: float = 30.0,
        max_wait: float = 60.0,
        max_queue: int = 64,
        path: str = "/edit",
    ) -> None:
        self.app = app
        self.state = state
        self.upload_dir = Path(upload_dir)
        self.limits = limits
        self.key = api_key.encode() if api_key else None
        self.default_policy = default_policy
        self.base_policy = base_policy
        self.body_timeout = body_timeout
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.path = path
        # base64 in JSON: 4/3 of the image, plus the other fields
        self.max_body_bytes = limits.max_image_bytes * 4 // 3 + (64 << 10)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from ade_runtime.serve import metrics  # here: prometheus_client loads only in a server process

        edit = scope["path"] == self.path and scope["method"] == "POST"
        t0 = time.perf_counter()
        send_status = StatusSend(send)

        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
                await respond(
                    send_status,
                    401,
                    "missing or wrong API key; send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
                    [(b"www-authenticate", b"Bearer"), (b"connection", b"close")],  # the body stays unread
                )
            elif edit:
                await self._edit(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if send_status.code == 0:
                await respond(send_status, 500, "internal error; the server log has the details")
        finally:
            if send_status.code == 500:
                metrics.INTERNAL_ERRORS.inc()
            if edit:
                metrics.REQUESTS.labels(str(send_status.code or 499)).inc()
                metrics.WALL.observe(time.perf_counter() - t0)

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"x-api-key" and hmac.compare_digest(value.strip(), self.key):
                return True
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                if hmac.compare_digest(value[7:].strip(), self.key):
                    return True
        return False

    async def _edit(self, scope, receive, send) -> None:
        admitted, wait, ahead = self.state.admit(self.max_wait, self.max_queue)
        if not admitted:
            retry = self.state.retry_after(self.max_wait)
            await respond(
                send,
                503,
                f"the server is busy: {self.state.admitted} requests ahead, about {wait:.0f} s of waiting "
                f"(the limit is {self.max_wait:g} s); retry after {retry} s",
                [(b"retry-after", str(retry).encode()), (b"connection", b"close")],
            )
            return
        ticket = self.state.ticket()
        upload = self.upload_dir / f"u-{ticket}"
        t0 = time.monotonic()
        send_status = StatusSend(send)

        try:
            raw = await self._read(scope, receive)
            if isinstance(raw, tuple):
                await respond(send, *raw)
                return
            ctype = _header(scope, b"content-type")
            body = await anyio.to_thread.run_sync(self._decode, ctype, raw, ticket, upload)
            del raw
            if isinstance(body, tuple):
                await respond(send, *body)
                return
            await self._forward(scope, receive, send_status, body, ticket)
        finally:
            if send_status.code == 200:
                self.state.answered(time.monotonic() - t0, ahead)
            self.state.release()
            upload.unlink(missing_ok=True)

    async def _read(self, scope, receive) -> bytes | tuple[int, str, list]:
        close = [(b"connection", b"close")]
        too_big = (
            413,
            f"the request body is over the limit of {self.max_body_bytes} bytes (an image of at most "
            f"{self.limits.max_image_bytes} bytes); resize or compress the image",
            close,
        )
        length = _header(scope, b"content-length")
        if length and (not length.isdigit() or len(length) > 18):
            return (400, "the Content-Length header is not a number", close)
        if length and int(length) > self.max_body_bytes:
            return too_big
        ctype = _header(scope, b"content-type").split(";")[0].strip().lower()
        if ctype not in ("application/json", "multipart/form-data"):
            return (
                415,
                f"content type {ctype[:60] or 'none'!r} is not accepted; send multipart/form-data "
                "(image file + fields) or application/json (image in base64)",
                close,
            )
        chunks, size = [], 0
        end = time.monotonic() + self.body_timeout
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, end - time.monotonic()))
            except asyncio.TimeoutError:
                return (
                    408,
                    f"the body did not arrive within {self.body_timeout:g} s; send the whole request at once",
                    close,
                )
            if msg["type"] == "http.disconnect":
                return (499, "the client disconnected before sending the whole body", close)
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return too_big
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)

    def _decode(self, content_type: str, raw: bytes, ticket: int, upload: Path) -> bytes | tuple[int, str]:
        """In a worker thread: parse, bound every field, read the image header, store the image."""
        try:
            if content_type.split(";")[0].strip().lower() == "multipart/form-data":
                try:
                    payload: dict[str, Any] = parse_multipart(content_type, raw)
                except ValueError as exc:
                    raise BadRequest(
                        400,
                        f"the multipart form cannot be parsed ({exc}); send fields 'image' (a file) and 'instruction'",
                    ) from None
            else:
                try:
                    payload = json.loads(raw)
                except (UnicodeDecodeError, ValueError) as exc:
                    raise BadRequest(
                        400, f"the body is not valid JSON ({str(exc)[:120]}); send a JSON object"
                    ) from None
                except RecursionError:
                    raise BadRequest(
                        400, "the JSON body is nested too deeply; send a flat JSON object"
                    ) from None
                if not isinstance(payload, dict):
                    raise BadRequest(400, "the JSON body must be an object with 'image' and 'instruction'")
            bad = [k for k in payload if str(k).startswith("_")]
            if bad:
                raise BadRequest(400, f"unknown field(s) {', '.join(str(k)[:40] for k in bad)}")
            check_fields(
                payload, default_policy=self.default_policy, base_policy=self.base_policy, limits=self.limits
            )
            image = _image_bytes(payload)
            open_image(image, self.limits.max_image_bytes)
        except BadRequest as exc:
            return (exc.status, str(exc))
        upload.write_bytes(image)
        payload = {k: v for k, v in payload.items() if k != "image"}
        return json.dumps({**payload, "_ticket": ticket, "_upload": upload.name}).encode()

    async def _forward(self, scope, receive, send, body: bytes, ticket: int) -> None:
        """Hand the small JSON to LitServe; cancel the ticket if the client leaves before the answer."""
        answered = asyncio.Event()
        gone = asyncio.Event()

        async def watch():
            msg = await receive()
            if msg["type"] == "http.disconnect" and not answered.is_set():
                self.state.cancel(ticket)
                gone.set()

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send_answer(message):
            if message["type"] == "http.response.start":
                answered.set()
            await send(message)

        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        watcher = asyncio.create_task(watch())
        try:
            await self.app({**scope, "headers": headers}, replay, send_answer)
        finally:
            watcher.cancel()


def _header(scope, name: bytes) -> str:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return ""


def parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """multipart/form-data (RFC 7578) -> {field: text, or bytes for a file}; linear in the body size
    (``bytes.split`` on the boundary; the email parser takes seconds on a 30 MB upload)."""
    params = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\n\n")
    boundary = params.get_param("boundary")
    if not boundary or not isinstance(boundary, str):
        raise ValueError("no boundary in the Content-Type header")
    parts = raw.split(b"--" + boundary.encode("latin-1"))
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        raise ValueError("the body is not multipart or its closing boundary is missing")
    if len(parts) > MAX_PARTS + 2:
        raise ValueError(f"more than {MAX_PARTS} parts")
    out: dict[str, Any] = {}
    for part in parts[1:-1]:
        if not part.startswith(b"\r\n") or not part.endswith(b"\r\n") or b"\r\n\r\n" not in part:
            raise ValueError("a part is malformed (CRLF, headers, blank line, body)")
        head, data = part[2:-2].split(b"\r\n\r\n", 1)
        if len(head) > 4096:
            raise ValueError("a part's headers exceed 4096 bytes")
        msg = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(
            head.decode("utf-8", "replace") + "\n\n"
        )
        name = msg.get_param("name", header="content-disposition")
        if not name or not isinstance(name, str):
            raise ValueError("a part has no name in its Content-Disposition")
        if name in out:
            raise ValueError(f"field '{name[:40]}' is given twice")
        if msg.get_param("filename", header="content-disposition") is not None or name == "image":
            out[name] = data
        else:
            out[name] = data.decode(msg.get_content_charset() or "utf-8", "replace")
    return out


async def respond(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
