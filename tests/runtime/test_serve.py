"""ade-serve end to end: a real server (subprocess, 127.0.0.1, testbed backbone) and a real client (httpx)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.serve import Server, as_json, make_sources, multipart, png, write_export
from PIL import Image

from ade_runtime.artifacts import atomic_export_dir
from ade_runtime.serve.exports import export_fingerprint
from ade_runtime.traces import TraceDataset


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    export = write_export(base / "export")
    server = Server(export, base / "traces", "--max-image-bytes", "200000")
    yield server, export
    assert server.stop() == 0, server.output()


async def post_many(url: str, payloads: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(url + "/edit", **p) for p in payloads))


def records(root: Path):
    ds = TraceDataset(root, images="header")
    recs = list(ds)
    assert ds.rejects == [], ds.rejects[:3]
    return recs


def test_fifty_concurrent_requests_all_answered_and_traced(served, sources):
    server, export = served
    assert httpx.get(server.url + "/health").status_code == 200
    payloads = []
    for i in range(50):
        img, text = sources[i % len(sources)]
        make = multipart if i % 2 else as_json
        payloads.append(make(img, text, id=f"c{i:02d}", seed=str(i) if i % 2 else i))
    responses = asyncio.run(post_many(server.url, payloads))
    assert [r.status_code for r in responses] == [200] * 50, [
        r.text[:200] for r in responses if r.status_code != 200
    ]
    fp = export_fingerprint(export)
    for i, r in enumerate(responses):
        body = r.json()
        assert body["id"] == f"c{i:02d}"
        s = body["summary"]
        assert s["export"] == fp and s["attempts"] >= 1 and s["nfe"] > 0 and s["stop_reason"]
        assert s["seconds_kind"] == "modelled" and s["gpu_seconds"] > 0 and s["decisions"]
        assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (96, 96)
    recs = records(server.traces)
    assert sorted(r.id for r in recs) == sorted(f"c{i:02d}" for i in range(50))
    assert {r.meta["ade"]["export"] for r in recs} == {fp}
    by_id = {r.id: r for r in recs}
    assert by_id["c07"].meta["ade"]["stop_reason"] == responses[7].json()["summary"]["stop_reason"]
    assert all(p.name.startswith("serve-w0-") for p in server.traces.glob("*.jsonl"))


def test_image_bytes_response(served, sources):
    server, _ = served
    img, text = sources[0]
    r = httpx.post(server.url + "/edit", **multipart(img, text, response="image"), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (96, 96)
    assert json.loads(r.headers["x-ade-summary"])["attempts"] >= 1


def _bad_cases(sources):
    img, text = sources[0]
    big = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)))
    wide = png(Image.new("RGB", (4100, 16)))
    cmyk = png(Image.new("CMYK", (64, 64)), "JPEG")
    gif = png(Image.new("RGB", (64, 64)), "GIF")
    return [
        ("missing image", {"json": {"instruction": text}}, 400, "'image' is missing"),
        ("bad base64", {"json": {"image": "not base64!", "instruction": text}}, 400, "base64"),
        (
            "not json",
            {"content": b"{oops", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("json array", {"json": [1, 2]}, 400, "must be an object"),
        ("form urlencoded", {"data": {"instruction": text}}, 415, "multipart/form-data"),
        ("unknown field", as_json(img, text, colour="red"), 400, "unknown field"),
        ("not an image", as_json(b"hello world", text), 415, "PNG, JPEG or WebP"),
        ("gif", as_json(gif, text), 415, "PNG, JPEG or WebP"),
        ("oversized bytes", as_json(big, text), 413, "limit"),
        ("oversized side", as_json(wide, text), 413, "at most 4096"),
        ("cmyk mode", as_json(cmyk, text), 422, "convert it to RGB"),
        ("empty instruction", as_json(img, "   "), 422, "instruction is empty"),
        ("long instruction", as_json(img, "x" * 2001), 422, "limit is 2000"),
        ("unknown policy", as_json(img, text, policy="best_guess"), 422, "unknown policy"),
        ("bad seed", as_json(img, text, seed="abc"), 422, "'seed' must be an integer"),
        ("negative deadline", as_json(img, text, max_seconds=-3), 422, "positive number"),
        ("bad id", as_json(img, text, id="../../etc"), 422, "is not allowed"),
        ("not a testbed image", as_json(png(Image.new("RGB", (64, 64))), text), 422, "testbed"),
    ]


def test_bad_inputs_get_4xx_with_the_fix(served, sources):
    server, _ = served
    with httpx.Client(timeout=60) as client:
        for name, kwargs, status, text in _bad_cases(sources):
            r = client.post(server.url + "/edit", **kwargs)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            assert text in r.json()["detail"], (name, r.text[:300])
            assert "Traceback" not in r.text
        img, instr = sources[1]
        assert client.post(server.url + "/edit", **as_json(img, instr, id="dup")).status_code == 200
        r = client.post(server.url + "/edit", **as_json(img, instr, id="dup"))
        assert r.status_code == 409 and "already served" in r.json()["detail"]


def test_deadline_is_honoured(served, sources):
    server, _ = served
    img, text = sources[2]
    with httpx.Client(timeout=60) as client:
        free = client.post(server.url + "/edit", **as_json(img, text, policy="best_of_8")).json()["summary"]
        capped = client.post(
            server.url + "/edit", **as_json(img, text, policy="best_of_8", max_seconds=30)
        ).json()["summary"]
    # testbed BAGEL: 8 modelled GPU-seconds per attempt without reasoning tokens
    assert free["attempts"] == 8 and free["stop_reason"] == "budget"
    assert capped["stop_reason"] == "deadline" and capped["attempts"] == 3
    assert capped["backbone_seconds"] <= 30 and capped["max_seconds"] == 30


def test_metrics_show_the_counters(served):
    server, _ = served
    text = httpx.get(server.url + "/metrics").text
    lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and ln[0] != "#"}
    assert lines['ade_serve_requests_total{status="200"}'] >= 50
    assert lines['ade_serve_requests_total{status="422"}'] >= 1
    assert lines['ade_serve_stop_reasons_total{reason="deadline"}'] >= 1
    assert lines["ade_serve_attempts_count"] >= 50 and lines["ade_serve_nfe_sum"] > 0
    assert lines["ade_serve_confidence_count"] >= 50
    assert lines['ade_serve_verifier_calls_total{kind="calibration"}'] >= 50


def test_hot_swap_mid_load_and_a_corrupt_swap_refused(served, sources, tmp_path):
    server, export = served
    old = export_fingerprint(export)
    new_src = write_export(tmp_path / "new", bias=0.5)
    new = export_fingerprint(new_src)
    assert new != old

    done: list[str] = []  # export fingerprints in completion order

    async def load_with_swap():
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(i):
                img, text = sources[i % len(sources)]
                r = await client.post(server.url + "/edit", **as_json(img, text, id=f"hs{i:02d}"))
                done.append(r.json()["summary"]["export"] if r.status_code == 200 else r.text)
                return r

            tasks = [asyncio.create_task(one(i)) for i in range(40)]
            while len(done) < 10:
                await asyncio.sleep(0.005)
            with atomic_export_dir(export) as tmp:  # the way `make train` replaces an export, mid-load
                for f in new_src.iterdir():
                    shutil.copy2(f, tmp / f.name)
            return await asyncio.gather(*tasks)

    responses = asyncio.run(load_with_swap())
    assert [r.status_code for r in responses] == [200] * 40
    served_by = [r.json()["summary"]["export"] for r in responses]
    assert old in served_by and new in served_by
    # in the worker's order (its trace shard), one switch between two requests
    order = [r.meta["ade"]["export"] for r in records(server.traces) if r.id.startswith("hs")]
    switch = order.index(new)
    assert set(order[:switch]) == {old} and set(order[switch:]) == {new}

    # a corrupt export (truncated weights) is refused; the new one keeps serving
    with atomic_export_dir(export) as tmp:
        write_export(tmp, bias=2.0)
        blob = (tmp / "card.safetensors").read_bytes()
        (tmp / "card.safetensors").write_bytes(blob[: len(blob) // 2])
    img, text = sources[0]
    with httpx.Client(timeout=60) as client:
        after = [client.post(server.url + "/edit", **as_json(img, text, id=f"cs{i}")) for i in range(3)]
        metrics = client.get(server.url + "/metrics").text
    assert [r.status_code for r in after] == [200] * 3
    assert {r.json()["summary"]["export"] for r in after} == {new}
    assert 'ade_serve_export_swaps_total{result="refused"} 1.0' in metrics
    assert 'ade_serve_export_swaps_total{result="swapped"} 1.0' in metrics
    recs = {r.id: r for r in records(server.traces)}
    for i, fp in enumerate(served_by):
        assert recs[f"hs{i:02d}"].meta["ade"]["export"] == fp
    assert {recs[f"cs{i}"].meta["ade"]["export"] for i in range(3)} == {new}


def test_sigterm_under_load_finishes_answered_requests(tmp_path, sources):
    export = write_export(tmp_path / "export")
    server = Server(export, tmp_path / "traces")
    answered: list[str] = []

    async def client_loop(k: int, stop_at: float):
        async with httpx.AsyncClient(timeout=60) as client:
            i = 0
            while time.monotonic() < stop_at:
                img, text = sources[(k + i) % len(sources)]
                rid = f"t{k}-{i}"
                i += 1
                try:
                    r = await client.post(server.url + "/edit", **as_json(img, text, id=rid))
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)  # refused or cut while shutting down: not answered
                    continue
                if r.status_code == 200:
                    answered.append(rid)

    async def run():
        stop_at = time.monotonic() + 4.0
        tasks = [asyncio.create_task(client_loop(k, stop_at)) for k in range(8)]
        await asyncio.sleep(1.5)
        server.terminate()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    rc = server.stop()
    assert rc == 0, (rc, server.output())
    assert len(answered) >= 5
    for shard in sorted(server.traces.glob("*.jsonl")):
        data = shard.read_bytes()
        assert data.endswith(b"\n"), f"{shard.name}: last line truncated"
        for line in data.splitlines():
            json.loads(line)
    ids = {r.id for r in records(server.traces)}
    assert set(answered) <= ids
