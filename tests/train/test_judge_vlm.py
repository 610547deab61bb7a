"""VLM judge mechanics on tiny RANDOMLY INITIALISED Qwen2-VL / Qwen2.5-VL models built in code.

The answers of a random model are meaningless: these tests check prompts, visual-token
expansion, batching, the save/load path through ``--judge vlm:<dir>``, and that garbage output
becomes a recorded ``malformed`` failure. The parsing of real answers is tested on given strings.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import pytest
import torch
from helpers.tiny_qwen import tiny_image_processor, tiny_model, tiny_tokenizer
from PIL import Image

from ade_runtime.traces import EditRecord, TraceDataset, TraceWriter
from ade_runtime.traces.records import Attempt, Cost
from ade_train.judge import AttemptRef, JudgeFailure, JudgeItem, read_journal
from ade_train.judge.cli import main
from ade_train.judge.viescore import combine, parse_answer
from ade_train.judge.vlm import VLMJudge, VLMJudgeConfig


def _items(n: int) -> list[JudgeItem]:
    return [
        JudgeItem(
            AttemptRef(f"r{i}", 0, 0, 0),
            f"turn the square {'red' if i % 2 else 'blue'}",
            Image.new("RGB", (64, 48), (20 * i, 80, 80)),
            Image.new("RGB", (48, 64), (80, 20 * i, 80)),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_random_model_batches_and_records_malformed_answers(kind):
    tok = tiny_tokenizer()
    model = tiny_model(kind, tok)
    judge = VLMJudge(
        model, tok, tiny_image_processor(), VLMJudgeConfig(model="tiny", batch_size=2, max_new_tokens=6)
    )
    assert judge.box_format == ("norm1000" if kind == "qwen2_vl" else "pixels")
    calls = []
    original = model.generate

    def counting_generate(**kw):
        calls.append({k: tuple(v.shape) for k, v in kw.items() if isinstance(v, torch.Tensor)})
        # the expanded visual tokens must equal what the vision tower produces for the batch
        n_img_tokens = int((kw["input_ids"] == model.config.image_token_id).sum())
        assert n_img_tokens == int(kw["image_grid_thw"].prod(dim=1).sum()) // 4
        assert torch.equal(kw["mm_token_type_ids"].bool(), kw["input_ids"] == model.config.image_token_id)
        return original(**kw)

    model.generate = counting_generate
    results = judge.judge(_items(3))
    assert len(results) == 3 and [r.ref.record_id for r in results] == ["r0", "r1", "r2"]
    # 3 attempts, batch 2 -> 2 generate calls; each attempt asks SC (2 images) and PQ (1 image)
    assert len(calls) == 2
    assert calls[0]["input_ids"][0] == 4 and calls[0]["image_grid_thw"] == (6, 3)
    assert calls[1]["input_ids"][0] == 2 and calls[1]["image_grid_thw"] == (3, 3)
    for r in results:  # a random model does not answer in JSON
        assert isinstance(r, JudgeFailure) and r.reason == "malformed" and r.raw is not None
    assert sum(r.usage.calls for r in results) == 2


def test_missing_images_fail_without_calling_the_model():
    tok = tiny_tokenizer()
    judge = VLMJudge(tiny_model("qwen2_vl", tok), tok, tiny_image_processor(), VLMJudgeConfig(model="tiny"))
    item = JudgeItem(AttemptRef("r", 0, 0, 0), "x", None, None)
    (res,) = judge.judge([item])
    assert isinstance(res, JudgeFailure) and res.reason == "no_image" and res.usage.calls == 0


def test_qwen25_pixel_boxes_and_qwen2_norm1000_boxes_are_normalised():
    sc = parse_answer(
        '{"score": [9, 10], "flaws": [{"kind": "leakage", "bbox_2d": [14, 28, 42, 56]}], "reasoning": "x"}'
    )
    pq = parse_answer('{"score": [10, 10]}')
    lab = combine(sc, pq, box_format="pixels", width=56, height=56)
    assert lab.flaws[0].box == pytest.approx((0.25, 0.5, 0.75, 1.0))
    assert lab.score == pytest.approx(0.9**0.5) and lab.passed
    sc = parse_answer(
        '{"score": [3, 10], "flaws": [{"kind": "no_change", "box": [0, 0, 500, 250]}, '
        '{"kind": "artifact", "box": [900, 0, 100, 50]}]}'
    )
    lab = combine(sc, pq, box_format="norm1000")
    assert [f.kind for f in lab.flaws] == ["no_change"] and lab.extra["dropped_flaws"] == 1
    assert lab.flaws[0].box == pytest.approx((0.0, 0.0, 0.5, 0.25)) and not lab.passed


def test_cli_loads_a_saved_tiny_model_from_a_local_directory(tmp_path, capsys):
    tok = tiny_tokenizer()
    model_dir = tmp_path / "tiny-qwen25"
    tiny_model("qwen2_5_vl", tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    tiny_image_processor().save_pretrained(model_dir)
    traces, out = tmp_path / "in", tmp_path / "out"
    with TraceWriter(traces) as w:
        src = w.write_image("images/a/source.png", Image.new("RGB", (40, 40), (255, 0, 0)))
        att = [
            Attempt(
                c,
                0,
                0,
                "make it blue",
                Cost(8),
                image=w.write_image(f"images/a/c{c}.png", Image.new("RGB", (40, 40), (0, 0, 40 * c))),
            )
            for c in range(3)
        ]
        w.write(EditRecord("a", "make it blue", src, "flux-kontext", att))
    code = main(
        [
            "--traces",
            str(traces),
            "--out",
            str(out),
            "--judge",
            f"vlm:{model_dir}",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "4",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cost"]["malformed"] == 3 and summary["cost"]["judge_calls"] == 2
    assert summary["cost"]["tokens_in"] > 0 and summary["unlabelled"] == 3
    (rec,) = list(TraceDataset(out))
    assert all(a.judge is None for a in rec.attempts)
    assert sum(e["kind"] == "failure" for e in read_journal(out / "judge-journal.ndjson")) == 3


def test_unsupported_or_missing_models_are_clear_input_errors(tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path / "llama")
    traces = tmp_path / "in"
    with TraceWriter(traces) as w:
        src = w.write_image("s.png", Image.new("RGB", (8, 8)))
        w.write(EditRecord("a", "x", src, "b", [Attempt(0, 0, 0, "x", Cost(1), image=src)]))
    assert (
        main(["--traces", str(traces), "--out", str(tmp_path / "o"), "--judge", f"vlm:{tmp_path / 'llama'}"])
        == 2
    )
    assert "'llama' model" in capsys.readouterr().err
    assert (
        main(
            ["--traces", str(traces), "--out", str(tmp_path / "o"), "--judge", f"vlm:{tmp_path / 'nothing'}"]
        )
        == 2
    )
    assert "cannot load" in capsys.readouterr().err
