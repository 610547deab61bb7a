"""The expensive verifiers (VLM reward models) end to end: a tiny random Qwen2-VL built in code,
a loopback OpenAI-compatible server, EditScore through a fake ``editscore`` module, the factory,
and the shared CLI options. No network, no download."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import sys
import time
import types

import pytest
import torch
from helpers.chat_server import ChatHandler, serve
from helpers.tiny_qwen import tiny_image_processor, tiny_model, tiny_tokenizer
from PIL import Image

from ade_runtime.cli._verifier import add_verifier_args, build_verifier
from ade_runtime.errors import BackboneUnavailableError, InputError, VerifierError
from ade_runtime.verifiers import VLM_FEATURE, Verdict, Verifier, VerifierCost, load_verifier
from ade_runtime.verifiers.editscore import EditScoreVerifier
from ade_runtime.verifiers.http import OpenAIVerifier
from ade_runtime.verifiers.qwen import QwenVL, QwenVLVerifier

SC = {"score": [8, 9], "flaws": [{"kind": "artifact", "box": [0.1, 0.2, 0.5, 0.6]}], "reasoning": "ok"}
PQ = {"score": [9, 7], "reasoning": "fine"}
EXPECTED = (8 * 7) ** 0.5 / 10  # VIEScore O / 10 = sqrt(min(SC) * min(PQ)) / 10


def _images(i: int = 0) -> tuple[Image.Image, Image.Image]:
    return Image.new("RGB", (64, 48), (20 * i, 80, 80)), Image.new("RGB", (48, 64), (80, 20 * i, 80))


# -- QwenVLVerifier on a tiny random Qwen2-VL ---------------------------------------------------------


def _tiny_vlm(kind: str = "qwen2_vl") -> QwenVL:
    tok = tiny_tokenizer()
    return QwenVL(tiny_model(kind, tok), tok, tiny_image_processor())


def _count_generate(vlm: QwenVL, script: dict[int, str] | None = None) -> list[dict]:
    """Wrap the transformers model's ``generate``: record each call's token counts and, when ``script``
    is given ({images in the prompt: answer text}), replace the random model's new tokens by that
    answer, so that the verifier's decode -> parse -> score path runs on a known answer."""
    calls: list[dict] = []
    model, tok = vlm.model, vlm.tokenizer
    original = model.generate

    def generate(**kw):
        out = original(**kw)
        ids = kw["input_ids"]
        calls.append({"rows": ids.shape[0], "prompt_tokens": int(kw["attention_mask"].sum())})
        if script is None:
            calls[-1]["new_tokens"] = int((out[:, ids.shape[1] :] != tok.pad_token_id).sum())
            return out
        n_img = (ids == tok.convert_tokens_to_ids("<|vision_start|>")).sum(dim=1).tolist()
        answers = [tok(script[int(n)])["input_ids"] for n in n_img]
        width = max(len(a) for a in answers)
        new = torch.full((ids.shape[0], width), tok.pad_token_id, dtype=ids.dtype)
        for r, a in enumerate(answers):
            new[r, : len(a)] = torch.tensor(a)
        calls[-1]["new_tokens"] = sum(len(a) for a in answers)
        return torch.cat([ids, new], dim=1)

    model.generate = generate
    return calls


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_verifier_scores_viescore_and_reports_measured_cost(kind):
    vlm = _tiny_vlm(kind)
    calls = _count_generate(vlm, {2: "```json\n" + json.dumps(SC) + "\n```", 1: json.dumps(PQ)})
    verifier = QwenVLVerifier(vlm, max_new_tokens=4)
    assert isinstance(verifier, Verifier)
    verdict = verifier.verify(*_images(), "make the square blue")
    assert isinstance(verdict, Verdict)
    assert verdict.scores == {VLM_FEATURE: pytest.approx(EXPECTED)}
    assert (verdict.detail["sc"], verdict.detail["pq"]) == (8.0, 7.0)
    assert len(calls) == 1 and calls[0]["rows"] == 2  # SC and PQ asked in one generate call
    assert verdict.seconds > 0  # measured wall time
    tokens = calls[0]["prompt_tokens"] + calls[0]["new_tokens"]
    assert verdict.flops == pytest.approx(2 * vlm.n_params * tokens)  # 2 x params x tokens
    assert vlm.n_params == sum(p.numel() for p in vlm.model.parameters())


def test_qwen_verifier_batches_and_a_random_model_gives_a_paid_verdict_without_scores():
    vlm = _tiny_vlm()
    calls = _count_generate(vlm)
    verifier = QwenVLVerifier(vlm, max_new_tokens=5, batch_size=2, feature="vlm_q")
    items = [(*_images(i), f"edit {i}") for i in range(3)]
    verdicts = verifier.verify_batch(items)
    assert [c["rows"] for c in calls] == [4, 2]  # 3 attempts, 2 per call, 2 questions each
    assert len(verdicts) == 3
    for v in verdicts:  # a random model does not answer in JSON: no score, but the call is charged
        assert v.scores == {} and v.detail["failure"] == "malformed" and v.detail["raw"]
        assert v.seconds > 0 and v.flops > 0
    assert verdicts[0].seconds == verdicts[1].seconds  # one call's time split over its two attempts
    # not modelled: the verifier's cost per call is the running mean of what it measured
    assert not verifier.modelled and "measured" in verifier.cost.source
    assert verifier.cost.seconds == pytest.approx(sum(v.seconds for v in verdicts) / 3)
    batch0 = calls[0]["prompt_tokens"] + calls[0]["new_tokens"]
    assert verdicts[0].flops == pytest.approx(2 * vlm.n_params * batch0 / 2)


def test_qwen_verifier_charges_a_modelled_cost_when_given():
    vlm = _tiny_vlm()
    _count_generate(vlm, {2: json.dumps(SC), 1: json.dumps(PQ)})
    verifier = QwenVLVerifier(vlm, max_new_tokens=4, cost=VerifierCost(seconds=1.5, source="doc"))
    verdict = verifier.verify(*_images(), "x")
    assert verdict.seconds == 1.5 and verdict.scores[VLM_FEATURE] == pytest.approx(EXPECTED)
    assert verifier.modelled and verifier.cost == VerifierCost(seconds=1.5, source="doc")


def test_load_verifier_loads_a_saved_tiny_model_and_names_bad_directories(tmp_path):
    tok = tiny_tokenizer()
    model_dir = tmp_path / "tiny-qwen2"
    tiny_model("qwen2_vl", tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    tiny_image_processor().save_pretrained(model_dir)
    verifier = load_verifier(f"vlm:{model_dir}", max_new_tokens=3, seconds=0.25)
    assert isinstance(verifier, QwenVLVerifier) and verifier.name == f"vlm:{model_dir}"
    assert verifier.vlm.box_format == "norm1000"
    verdict = verifier.verify(*_images(), "x")
    assert verdict.seconds == 0.25 and verdict.detail["failure"] == "malformed"
    with pytest.raises(InputError, match="cannot load"):
        load_verifier(f"vlm:{tmp_path / 'nothing'}")


# -- OpenAIVerifier against a loopback server ---------------------------------------------------------


class _Handler(ChatHandler):
    """Answers by the instruction: BADREQUEST -> 400, SLOW -> 0.5 s, MALFORMED -> prose, else SC / PQ."""

    def answer(self, n_images, text, body):
        srv = self.server
        mode = text.rsplit("Editing instruction: ", 1)[-1] if n_images == 2 else srv.last
        with srv.lock:
            srv.requests.append((n_images, mode, self.headers.get("Authorization"), body["model"]))
            srv.last = mode
        if len(srv.requests) > 50:
            return self.send_json(503, {"error": "runaway client"})
        if mode == "BADREQUEST":
            return self.send_json(400, {"error": "unknown model"})
        if mode == "SLOW":
            time.sleep(0.5)
        self.send_answer(
            "looks good to me" if mode == "MALFORMED" else json.dumps(SC if n_images == 2 else PQ)
        )


@pytest.fixture
def server():
    with serve(_Handler) as srv:
        srv.last = ""
        yield srv


def _openai(server, **kw) -> OpenAIVerifier:
    opts = dict(base_url=server.base_url, api_key="", backoff_s=0.01, timeout_s=5.0)
    opts.update(kw)
    return OpenAIVerifier("editscore-7b", **opts)


def test_openai_verifier_scores_through_the_endpoint_with_key_from_env(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    verifier = _openai(server, params=7e9, api_key=None)  # None: read OPENAI_API_KEY
    assert isinstance(verifier, Verifier) and verifier.name == "openai:editscore-7b"
    verdict = verifier.verify(*_images(), "make the mug blue")
    assert verdict.scores == {VLM_FEATURE: pytest.approx(EXPECTED)}
    assert [r[0] for r in server.requests] == [2, 1]  # SC with both images, then PQ with the edit
    assert {r[2] for r in server.requests} == {"Bearer sk-local"}
    assert {r[3] for r in server.requests} == {"editscore-7b"}
    assert (verdict.detail["tokens_in"], verdict.detail["tokens_out"]) == (200, 40)
    assert verdict.detail["flaws"] == [{"kind": "artifact", "box": pytest.approx([0.1, 0.2, 0.5, 0.6])}]
    assert verdict.flops == pytest.approx(2 * 7e9 * 240)
    assert 0 < verdict.seconds < 5


def test_openai_verifier_4xx_is_one_clear_error_and_not_retried(server):
    with pytest.raises(VerifierError, match="HTTP 400") as info:
        _openai(server, max_retries=3).verify(*_images(), "BADREQUEST")
    assert len(server.requests) == 1 and "\n" not in str(info.value)
    assert "--verifier-url" in str(info.value) and info.value.seconds > 0


def test_openai_verifier_timeout_is_retried_then_raised_with_its_cost(server):
    t0 = time.monotonic()
    with pytest.raises(VerifierError, match="within 0.2s") as info:
        _openai(server, timeout_s=0.2, max_retries=1).verify(*_images(), "SLOW")
    assert len(server.requests) == 2 and info.value.seconds >= 0.4
    assert time.monotonic() - t0 < 3.0


def test_openai_verifier_malformed_answer_costs_one_request_and_gives_no_score(server):
    verdict = _openai(server, cost=VerifierCost(seconds=0.9)).verify(*_images(), "MALFORMED")
    assert verdict.scores == {} and verdict.detail["failure"] == "malformed"
    assert len(server.requests) == 1 and verdict.seconds == 0.9  # PQ not asked; modelled cost charged


def test_openai_verifier_needs_an_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match="--verifier-url"):
        OpenAIVerifier("m")
    with pytest.raises(InputError, match="base_url"):
        OpenAIVerifier("m", base_url="ftp://x")


# -- EditScoreVerifier through a fake `editscore` module --------------------------------------------


def test_editscore_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "editscore", None)  # import editscore -> ImportError
    with pytest.raises(BackboneUnavailableError, match=r"pip install 'ade-adaptive\[editscore\]'") as info:
        load_verifier("editscore:EditScore/EditScore-7B")
    assert "\n" not in str(info.value)


@pytest.fixture
def fake_editscore(monkeypatch):
    """A stand-in for the package's API (README / editscore/__init__.py, v0.2): records the call."""
    mod = types.ModuleType("editscore")
    made: list = []

    class EditScore:
        def __init__(self, **kw):
            self.kw, self.calls = kw, []
            made.append(self)

        def evaluate(self, image_prompts, text_prompt):
            self.calls.append((image_prompts, text_prompt))
            if text_prompt == "UNPARSABLE":
                return {"overall": 4.0, "SC_reasoning": "guess_if_cannot_parse | ...", "PQ_reasoning": ""}
            return {
                "prompt_following": 8.0,
                "consistency": 6.0,
                "perceptual_quality": 9.0,
                "overall": 7.2,
                "SC_reasoning": "follows",
                "PQ_reasoning": "clean",
            }

    mod.EditScore = EditScore
    monkeypatch.setitem(sys.modules, "editscore", mod)
    return made


def test_editscore_maps_the_call_and_normalises_overall(fake_editscore):
    verifier = load_verifier("editscore:EditScore/EditScore-7B", seconds=1.2)
    (scorer,) = fake_editscore
    assert scorer.kw == {
        "backbone": "qwen25vl",
        "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
        "lora_path": "EditScore/EditScore-7B",
        "score_range": 25,
        "num_pass": 1,
    }
    src, att = _images()
    verdict = verifier.verify(src, att, "add a hat")
    ((images, instruction),) = scorer.calls
    assert instruction == "add a hat" and [im.size for im in images] == [src.size, att.size]
    assert verdict.scores == {VLM_FEATURE: pytest.approx(0.72)}  # overall on 0-10 -> [0, 1]
    assert verdict.detail["prompt_following"] == 8.0 and verdict.seconds == 1.2
    assert verifier.verify(src, att, "UNPARSABLE").scores == {}  # EditScore's random guess is not a score


def test_editscore_picks_base_model_and_backend_and_refuses_unknown_weights(fake_editscore, tmp_path):
    EditScoreVerifier("EditScore/EditScore-Qwen3-VL-8B-Instruct", vllm=True)
    assert fake_editscore[-1].kw["backbone"] == "qwen3vl_vllm"
    assert fake_editscore[-1].kw["model_name_or_path"] == "Qwen/Qwen3-VL-8B-Instruct"
    with pytest.raises(InputError, match="base_model"):
        EditScoreVerifier(str(tmp_path / "my-lora"))
    EditScoreVerifier(str(tmp_path / "my-lora"), base_model="Qwen/Qwen2.5-VL-7B-Instruct")
    assert fake_editscore[-1].kw["lora_path"] == str(tmp_path / "my-lora")


# -- the factory and the shared CLI options -----------------------------------------------------------


@pytest.mark.parametrize("spec", ["foo", "vlm:", "openai", "editscore:", "emulated:x", ""])
def test_load_verifier_rejects_bad_specs_in_one_line(spec):
    with pytest.raises(InputError, match="not a verifier spec") as info:
        load_verifier(spec)
    assert "vlm:<hub id or local path>" in str(info.value) and "\n" not in str(info.value)


def test_load_verifier_emulated_constructs_the_testbed_model(monkeypatch):
    mod = types.ModuleType("ade_runtime.testbed.reward")

    class EmulatedRewardModel:
        def __init__(self, noise_sd=0.1, seconds_per_call=1.0):
            self.noise_sd, self.seconds_per_call = noise_sd, seconds_per_call

    mod.EmulatedRewardModel = EmulatedRewardModel
    monkeypatch.setitem(sys.modules, "ade_runtime.testbed.reward", mod)
    assert load_verifier("emulated").seconds_per_call == 1.0  # its own defaults
    assert load_verifier("emulated", seconds=0.3).seconds_per_call == 0.3
    monkeypatch.setitem(sys.modules, "ade_runtime.testbed.reward", None)
    with pytest.raises(InputError, match="emulated"):
        load_verifier("emulated")


def test_load_verifier_option_errors():
    with pytest.raises(InputError, match="--verifier-url applies to openai"):
        load_verifier("emulated", base_url="http://x/v1")
    with pytest.raises(InputError, match="seconds per call"):
        load_verifier("openai:m", base_url="http://x/v1", seconds=-1.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ade-edit")
    add_verifier_args(p)
    return p


def test_cli_options_parse_and_build(server):
    p = _parser()
    assert build_verifier(p.parse_args([])) is None  # default: none
    args = p.parse_args(
        ["--verifier", "openai:qwen-vl", "--verifier-url", server.base_url, "--verifier-seconds", "0.8"]
    )
    verifier = build_verifier(args)
    assert isinstance(verifier, OpenAIVerifier) and verifier.cost.seconds == 0.8 and verifier.modelled
    assert verifier.client.url == server.base_url + "/chat/completions"


def test_cli_option_errors(capsys):
    p = _parser()
    for bad in (["--verifier-seconds", "-1"], ["--verifier-seconds", "fast"], ["--verifier-seconds", "nan"]):
        with pytest.raises(SystemExit) as info:
            p.parse_args(bad)
        assert info.value.code == 2
        assert "--verifier-seconds" in capsys.readouterr().err
    with pytest.raises(InputError, match="need --verifier SPEC"):
        build_verifier(p.parse_args(["--verifier-url", "http://x/v1"]))
    with pytest.raises(InputError, match="not a verifier spec"):
        build_verifier(p.parse_args(["--verifier", "gpt"]))
