"""A loopback OpenAI-compatible ``/chat/completions`` server for tests: subclass ``ChatHandler`` and
implement ``answer(n_images, text, body)``; ``serve(handler)`` runs it on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        n_images = sum(c["type"] == "image_url" for c in content)
        text = next(c["text"] for c in content if c["type"] == "text")
        self.answer(n_images, text, body)

    def answer(self, n_images: int, text: str, body: dict) -> None:
        raise NotImplementedError

    def send_json(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def send_answer(self, text: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> None:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        self.send_json(
            200, {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": usage}
        )


@contextmanager
def serve(handler: type[ChatHandler]) -> Iterator[ThreadingHTTPServer]:
    """The server, with ``lock``, ``requests`` (a list) and ``base_url`` (``http://127.0.0.1:<port>/v1``)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads, srv.block_on_close = True, False
    srv.lock, srv.requests = threading.Lock(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
