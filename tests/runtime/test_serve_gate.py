"""ade-serve's gate, limits and shared state in process: bounded fields, ASGI behaviour, shedding rules."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ade_runtime.errors import InputError
from ade_runtime.serve import metrics
from ade_runtime.serve.api import EditAPI, redact
from ade_runtime.serve.gate import EditGate, parse_multipart
from ade_runtime.serve.inputs import BadRequest, Limits, check_fields
from ade_runtime.serve.server import api_key_of, build_parser
from ade_runtime.serve.shared import ServeState


# -- fields -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, status, text",
    [
        ({"category": "\ud800"}, 422, "lone surrogate"),
        ({"category": "c" * 65}, 422, "the limit is 64"),
        ({"category": "  "}, 422, "blank"),
        ({"category": "a\x00b"}, 422, "control characters"),
        ({"instruction": "x" * 9000}, 422, "the limit is 8000"),
        ({"policy": "p" * 65}, 422, "the limit is 64"),
        ({"policy": "best_of_99999999999999999999999"}, 422, "--max-candidates"),
        ({"policy": "fixed_chain"}, 200, ""),
        ({"policy": "single@999999999999"}, 422, "--max-tokens"),
        ({"max_seconds": int("1" + "0" * 400)}, 422, "out of range"),
        ({"max_seconds": "1" * 40}, 422, "40 characters"),
        ({"max_seconds": "nan"}, 422, "send a number in [0, 300]"),
        ({"max_seconds": "1e999"}, 422, "send a number"),
        ({"max_seconds": 300.5}, 422, "--max-seconds"),
        ({"max_seconds": 0}, 422, "positive"),
        ({"max_seconds": True}, 422, "got bool"),
        ({"seed": 2**31}, 422, "[0, 2147483647]"),
        ({"seed": 1.5}, 422, "must be an integer"),
        ({"seed": [1]}, 422, "got list"),
        ({"response": "xml"}, 422, "use 'json'"),
        ({"_upload": "x"}, 200, ""),  # internal fields pass check_fields; the gate refuses them from clients
    ],
)
def test_check_fields_bounds_every_field(fields, status, text):
    payload = {"image": "", "instruction": "turn it blue", **fields}
    if status == 200:
        check_fields(payload)
        return
    with pytest.raises(BadRequest) as exc:
        check_fields(payload)
    assert exc.value.status == status and text in str(exc.value), str(exc.value)


def test_limits_are_checked():
    with pytest.raises(InputError, match="--max-candidates"):
        Limits(max_candidates=0)
    with pytest.raises(InputError, match="--max-seconds"):
        Limits(max_seconds=float("inf"))
    f = check_fields({"instruction": "x", "policy": "best_of_4"}, limits=Limits(max_candidates=4))
    assert f["config"].max_candidates == 4 and f["max_seconds"] == 300.0  # the default deadline applies


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["image", "instruction", "policy", "seed", "max_seconds", "id", "category", "response"]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=80),
            st.lists(st.integers()),
        ),
    )
)
def test_check_fields_refuses_only_with_bad_request(payload):
    try:
        check_fields(payload)
    except BadRequest as exc:
        assert 400 <= exc.status < 500


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["XyZ", '"a b"', ""]))
def test_multipart_parser_raises_only_value_error(body, boundary):
    try:
        parse_multipart(f"multipart/form-data; boundary={boundary}", b"--XyZ\r\n" + body)
    except ValueError:
        pass


def test_multipart_parser_reads_fields_and_refuses_duplicates():
    part = b'--B\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nblue\r\n'
    assert parse_multipart("multipart/form-data; boundary=B", part + b"--B--\r\n") == {"instruction": "blue"}
    with pytest.raises(ValueError, match="twice"):
        parse_multipart("multipart/form-data; boundary=B", part + part + b"--B--\r\n")
    with pytest.raises(ValueError, match="closing boundary"):
        parse_multipart("multipart/form-data; boundary=B", part)


# -- the gate as an ASGI app --------------------------------------------------------------------------
def scope(path="/edit", method="POST", headers=()):
    return {"type": "http", "path": path, "method": method, "headers": list(headers), "query_string": b""}


async def call(gate, sc, receive):
    sent = []

    async def send(message):
        sent.append(message)

    await gate(sc, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body) if body else None


def gate_for(tmp_path, app=None, **kw) -> EditGate:
    async def ok_app(scope, receive, send):
        msg = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(
            {"type": "http.response.body", "body": json.dumps({"got": json.loads(msg["body"])}).encode()}
        )

    opts = dict(state=ServeState(1), upload_dir=tmp_path, limits=Limits(), body_timeout=0.5)
    return EditGate(app or ok_app, **{**opts, **kw})


async def never():
    await asyncio.sleep(3600)


def test_gate_refuses_a_wrong_key_without_reading_the_body(tmp_path):
    gate = gate_for(tmp_path, api_key="k")
    status, headers, body = asyncio.run(call(gate, scope(headers=[(b"x-api-key", b"nope")]), never))
    assert status == 401 and "API key" in body["detail"] and headers[b"www-authenticate"] == b"Bearer"
    status, _, _ = asyncio.run(call(gate, scope("/metrics", "GET"), never))
    assert status == 401
    health = gate_for(tmp_path, api_key="k", app=lambda s, r, send: _plain(send))
    assert asyncio.run(call(health, scope("/health", "GET"), never))[0] == 200


async def _plain(send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_gate_times_out_a_stalled_body_and_refuses_bad_headers(tmp_path):
    gate = gate_for(tmp_path)
    json_ct = (b"content-type", b"application/json")

    async def first_chunk_then_stall():
        if not hasattr(first_chunk_then_stall, "done"):
            first_chunk_then_stall.done = True
            return {"type": "http.request", "body": b'{"ima', "more_body": True}
        await never()

    status, headers, body = asyncio.run(call(gate, scope(headers=[json_ct]), first_chunk_then_stall))
    assert status == 408 and headers[b"connection"] == b"close"
    status, _, body = asyncio.run(call(gate, scope(headers=[(b"content-type", b"text/plain")]), never))
    assert status == 415 and "multipart/form-data" in body["detail"]
    big = [json_ct, (b"content-length", str(1 << 40).encode())]
    assert asyncio.run(call(gate, scope(headers=big), never))[0] == 413
    assert gate.state.admitted == 0  # every refusal released its admission


def test_gate_forwards_a_small_json_and_stores_the_image(tmp_path):
    seen = {}

    async def app(scope, receive, send):
        seen.update(json.loads((await receive())["body"]))
        seen["file"] = (tmp_path / seen["_upload"]).read_bytes()
        await _plain(send)

    gate = gate_for(tmp_path, app=app)
    body = json.dumps({"image": base64.b64encode(_tiny_png()).decode(), "instruction": "blue"}).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    status, _, _ = asyncio.run(call(gate, scope(headers=[(b"content-type", b"application/json")]), receive))
    assert status == 200 and "image" not in seen and seen["file"] == _tiny_png()
    assert seen["instruction"] == "blue" and isinstance(seen["_ticket"], int)
    assert list(tmp_path.iterdir()) == []  # the upload is removed once answered


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    return buf.getvalue()


def test_gate_turns_an_escaping_exception_into_a_counted_500(tmp_path):
    async def broken(scope, receive, send):
        raise RuntimeError("boom at /secret/path")

    before = metrics.INTERNAL_ERRORS._value.get()
    status, _, body = asyncio.run(call(gate_for(tmp_path, app=broken), scope("/info", "GET"), never))
    assert status == 500 and "secret" not in json.dumps(body)
    assert metrics.INTERNAL_ERRORS._value.get() == before + 1


# -- shared state ---------------------------------------------------------------------------------------
def test_admission_sheds_by_expected_wait_and_queue_length():
    s = ServeState(2)
    assert [s.admit(max_wait=1.0, max_queue=3)[0] for _ in range(6)] == [True] * 6  # no service time yet
    assert s.admit(max_wait=1.0, max_queue=3) == (False, 0.0, 6)  # 3 per worker admitted
    for _ in range(6):
        s.release()
    s.answered(0.5, ahead=0)  # one request took 0.5 s with nobody ahead
    # 2 ahead on 2 workers: 0.5 s of waiting + 0.5 s of its own > 0.9 s
    assert [s.admit(max_wait=0.9, max_queue=100)[0] for _ in range(3)] == [True, True, False]
    assert s.retry_after(0.9) == 1
    one = ServeState(1)
    one.answered(3.0, ahead=2)  # waited for two, then its own: 1 s each
    assert one.service_seconds == pytest.approx(1.0)


def test_cancel_ring_and_stall_detection():
    s = ServeState(2, ring=4)
    t = [s.ticket() for _ in range(6)]
    assert len(set(t)) == 6
    for x in t:
        s.cancel(x)
    assert not s.is_cancelled(t[0]) and s.is_cancelled(t[5]) and not s.is_cancelled(None)
    assert not s.stalled(0.01)
    s.busy(0)
    s.busy(1)
    time.sleep(0.05)
    assert s.stalled(0.01) and not s.stalled(60)
    s.idle(1)
    assert not s.stalled(0.01)


def test_ready_is_false_while_every_worker_is_stalled():
    args = build_parser().parse_args(["--backbone", "testbed", "--predictors", "x"])
    api = EditAPI(args, state=ServeState(1), stall_seconds=0.01)
    assert api.health()
    api.state.busy(0)
    time.sleep(0.05)
    assert not api.health()


def test_api_key_sources(monkeypatch):
    args = build_parser().parse_args(["--backbone", "testbed", "--predictors", "x"])
    monkeypatch.delenv("ADE_API_KEY", raising=False)
    monkeypatch.delenv("LIT_SERVER_API_KEY", raising=False)
    assert api_key_of(args) is None
    monkeypatch.setenv("LIT_SERVER_API_KEY", "lit")
    assert api_key_of(args) == "lit"
    monkeypatch.setenv("ADE_API_KEY", "ade")
    assert api_key_of(args) == "ade"
    assert (
        api_key_of(
            build_parser().parse_args(["--backbone", "testbed", "--predictors", "x", "--api-key", "o"])
        )
        == "o"
    )


def test_redact_removes_server_paths():
    msg = "critique.json: not exported in /srv/models/export (see /var/log/x.log)"
    out = redact(msg, "/srv/models/export")
    assert "/srv" not in out and "/var" not in out and "export" in out and "x.log" in out
    assert redact(f"{os.getcwd()}/a.json", None).endswith("a.json")


def test_the_app_builds_its_openapi_schema(tmp_path):
    from ade_runtime.serve.server import build_server

    args = build_parser().parse_args(["--backbone", "testbed", "--predictors", "x", "--device", "cpu"])
    schema = build_server(args, str(tmp_path)).app.openapi()  # not served (404), but it must not fail
    assert "/health" in schema["paths"] and "/metrics" in schema["paths"]
