"""OpenAI-compatible judge against a real HTTP server on 127.0.0.1 (good, malformed, 429, slow, 4xx)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from ade_runtime.traces import EditRecord, TraceDataset
from ade_runtime.traces.records import Attempt, Cost
from ade_runtime.traces.writer import TraceWriter
from ade_train.judge import AttemptRef, JudgeFailure, JudgeItem, JudgeResult, read_journal
from ade_train.judge.cli import main
from ade_train.judge.openai_judge import OpenAIJudge, OpenAIJudgeConfig

MAX_REQUESTS = 200  # the server refuses to answer more than this: a runaway client fails the test

SC_GOOD = {"score": [8, 9], "flaws": [{"kind": "artifact", "box": [0.1, 0.2, 0.5, 0.6]}], "reasoning": "ok"}
PQ_GOOD = {"score": [9, 7], "reasoning": "fine"}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        n_images = sum(1 for c in content if c["type"] == "image_url")
        text = next(c["text"] for c in content if c["type"] == "text")
        assert all(
            c["image_url"]["url"].startswith("data:image/png;base64,")
            for c in content
            if c["type"] == "image_url"
        )
        with srv.lock:
            srv.requests.append((n_images, text, self.headers.get("Authorization")))
            count = len(srv.requests)
            key = text.rsplit("Editing instruction: ", 1)[-1] if n_images == 2 else "pq"
            srv.seen[key] = srv.seen.get(key, 0) + 1
            nth = srv.seen[key]
        if count > MAX_REQUESTS:
            return self._reply(503, {"error": "too many requests in this test"})
        if key == "RATELIMIT" and nth == 1:
            return self._reply(429, {"error": "slow down"}, {"Retry-After": "0.05"})
        if key == "BROKEN" and nth == 1:
            return self._reply(502, {"error": "bad gateway"})
        if key == "SLOW":
            time.sleep(0.6)
        if key == "BADREQUEST":
            return self._reply(400, {"error": "bad request"})
        if key == "MALFORMED":
            answer = "I think this edit is quite nice, maybe seven out of ten?"
        elif n_images == 2:
            answer = "Here you go:\n```json\n" + json.dumps(SC_GOOD) + "\n```"
        else:
            answer = json.dumps(PQ_GOOD)
        return self._reply(
            200,
            {
                "choices": [{"message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            },
        )

    def _reply(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.block_on_close = False
    srv.lock = threading.Lock()
    srv.requests = []
    srv.seen = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


def _item(instruction: str, rid: str = "r0") -> JudgeItem:
    src = Image.new("RGB", (32, 24), (200, 20, 20))
    out = Image.new("RGB", (32, 24), (20, 20, 200))
    return JudgeItem(AttemptRef(rid, 0, 0, 0), instruction, src, out)


def _judge(server, **kw) -> OpenAIJudge:
    cfg = dict(
        model="test-vlm", base_url=server.base_url, api_key="sk-test", rps=0, backoff_s=0.01, timeout_s=5.0
    )
    cfg.update(kw)
    return OpenAIJudge(OpenAIJudgeConfig(**cfg))


def test_good_answer_gives_viescore_label_with_boxes_and_tokens(server):
    (res,) = _judge(server).judge([_item("make the mug blue")])
    assert isinstance(res, JudgeResult)
    # O = sqrt(min(8, 9) * min(9, 7)) / 10
    assert res.label.score == pytest.approx((8 * 7) ** 0.5 / 10)
    assert res.label.passed is True
    assert [f.kind for f in res.label.flaws] == ["artifact"]
    assert res.label.flaws[0].box == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert (res.usage.calls, res.usage.tokens_in, res.usage.tokens_out) == (2, 200, 40)
    assert [r[0] for r in server.requests] == [2, 1]  # SC with both images, PQ with the output only
    assert server.requests[0][2] == "Bearer sk-test"
    assert "make the mug blue" in server.requests[0][1]


def test_malformed_answer_is_a_recorded_failure(server):
    (res,) = _judge(server).judge([_item("MALFORMED")])
    assert isinstance(res, JudgeFailure)
    assert res.reason == "malformed"
    assert "seven out of ten" in res.raw


def test_429_and_5xx_are_retried_with_backoff(server):
    res = _judge(server).judge([_item("RATELIMIT", "a"), _item("BROKEN", "b")])
    assert all(isinstance(r, JudgeResult) for r in res)
    assert [r.usage.calls for r in res] == [3, 3]
    assert server.seen["RATELIMIT"] == 2 and server.seen["BROKEN"] == 2


def test_timeout_is_retried_then_recorded(server):
    t0 = time.monotonic()
    (res,) = _judge(server, timeout_s=0.2, max_retries=1).judge([_item("SLOW")])
    assert isinstance(res, JudgeFailure) and res.reason == "timeout"
    assert res.usage.calls == 2 and server.seen["SLOW"] == 2
    assert time.monotonic() - t0 < 3.0


def test_4xx_is_not_retried(server):
    (res,) = _judge(server, max_retries=3).judge([_item("BADREQUEST")])
    assert isinstance(res, JudgeFailure) and res.reason == "http_error" and "HTTP 400" in res.message
    assert server.seen["BADREQUEST"] == 1


def test_rate_limit_spaces_requests(server):
    judge = _judge(server, rps=20.0)
    t0 = time.monotonic()
    judge.judge([_item(f"edit {i}", f"r{i}") for i in range(3)])  # 6 requests
    assert time.monotonic() - t0 >= 5 / 20 - 0.01


def test_unreachable_server_is_a_failure_not_a_crash():
    judge = OpenAIJudge(
        OpenAIJudgeConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.01, rps=0)
    )
    (res,) = judge.judge([_item("x")])
    assert isinstance(res, JudgeFailure) and res.reason == "http_error"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudgeConfig(model="m", base_url="ftp://x")
    with pytest.raises(ValueError, match="pass_threshold"):
        OpenAIJudgeConfig(model="m", pass_threshold=2.0)


def _dataset(root, instructions):
    with TraceWriter(root) as w:
        for i, instr in enumerate(instructions):
            rid = f"req-{i}"
            src = w.write_image(f"images/{rid}/source.png", Image.new("RGB", (32, 32), (10 * i, 100, 100)))
            out = w.write_image(f"images/{rid}/c0.png", Image.new("RGB", (32, 32), (100, 10 * i, 100)))
            attempts = [
                Attempt(0, 0, 0, instr, Cost(28), image=out),
                Attempt(1, 0, 0, instr, Cost(28), image=None),
            ]
            w.write(EditRecord(rid, instr, src, "flux-kontext", attempts))


def test_cli_with_api_judge_records_failures_and_costs(server, tmp_path, capsys):
    traces, out = tmp_path / "in", tmp_path / "out"
    _dataset(traces, ["make it blue", "MALFORMED", "RATELIMIT"])
    code = main(
        [
            "--traces",
            str(traces),
            "--out",
            str(out),
            "--judge",
            "openai:test-vlm",
            "--base-url",
            server.base_url,
            "--rps",
            "0",
            "--workers",
            "2",
            "--batch-size",
            "1",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["labelled_by_this_judge"] == 2 and summary["no_image"] == 3
    assert summary["cost"]["malformed"] == 1 and summary["cost"]["tokens_in"] == 500
    ds = TraceDataset(out)
    recs = {r.id: r for r in ds}
    assert ds.rejects == [] and len(recs) == 3
    assert recs["req-0"].attempts[0].judge.passed is True
    assert recs["req-1"].attempts[0].judge is None  # malformed: left null, counted
    assert all(r.attempts[1].judge is None for r in recs.values())  # no image: left null
    kinds = [e["kind"] for e in read_journal(out / "judge-journal.ndjson")]
    assert kinds.count("result") == 2 and kinds.count("failure") == 1
