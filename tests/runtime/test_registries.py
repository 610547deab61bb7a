"""Backbones and verifiers are looked up by name in a registry (peft's ``register_peft_method``):
a registered one loads through the same door as the built-ins, an unknown name lists the known ones."""

from __future__ import annotations

import pytest

from ade_runtime.backbones import BACKBONE_LOADERS, BACKBONE_NAMES, load_backbone, register_backbone
from ade_runtime.errors import InputError
from ade_runtime.verifiers import SPEC_FORMS, load_verifier
from ade_runtime.verifiers.factory import VERIFIER_LOADERS, VerifierEntry, check_spec, register_verifier


def test_the_built_in_backbones_are_registered_in_the_order_the_clis_list_them():
    assert BACKBONE_NAMES == ("testbed", "flux-kontext", "diffusers", "step1x-edit", "bagel")
    assert tuple(BACKBONE_LOADERS) == BACKBONE_NAMES
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("testbed")(lambda *a, **k: None)


def test_a_registered_backbone_loads_by_name_and_unknown_names_list_it(monkeypatch):
    seen = {}

    class Fake:
        name = "fake"

    def loader(model, device, *, dtype, cpu_offload, srm, pipeline_kwargs, **kwargs):
        seen.update(model=model, device=device, dtype=dtype, pipeline_kwargs=pipeline_kwargs, **kwargs)
        return Fake()

    monkeypatch.setitem(BACKBONE_LOADERS, "fake", loader)
    backbone = load_backbone("fake", "m", "cpu", dtype="float32", pipeline_kwargs={"a": 1}, extra=2)
    assert isinstance(backbone, Fake)
    assert seen == {
        "model": "m",
        "device": "cpu",
        "dtype": "float32",
        "pipeline_kwargs": {"a": 1},
        "extra": 2,
    }
    with pytest.raises(InputError, match="only, not fake"):  # the mask is a flux-kontext capture
        load_backbone("fake", srm=True)
    with pytest.raises(InputError) as info:
        load_backbone("nope")
    assert str(info.value) == (
        "unknown backbone 'nope'; choose one of testbed, flux-kontext, diffusers, step1x-edit, bagel, fake"
    )


def test_the_testbed_keeps_its_options():
    backbone = load_backbone("testbed")
    assert backbone.options == {"device": "cpu"}
    with pytest.raises(InputError, match="x not accepted by --backbone testbed"):
        load_backbone("testbed", pipeline_kwargs={"x": 1})


def test_verifier_specs_are_registered_kinds(monkeypatch):
    assert SPEC_FORMS == (
        "vlm:<hub id or local path>",
        "openai:<model>",
        "editscore:<id or path>",
        "emulated",
    )
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("vlm", "vlm:<x>")(lambda *a, **k: None)
    calls = []
    monkeypatch.setitem(
        VERIFIER_LOADERS,
        "mine",
        VerifierEntry("mine:<path>", lambda arg, **kw: calls.append((arg, kw)) or "v"),
    )
    check_spec("mine:/tmp/x")
    assert load_verifier("mine: /tmp/x ", seconds=0.5, device="cpu", size=3) == "v"
    ((arg, kw),) = calls
    assert arg == "/tmp/x" and kw["cost"].seconds == 0.5 and kw["device"] == "cpu" and kw["size"] == 3
    for bad in ("mine", "mine:", "emulated:x", "vlm:", "nope:1"):
        with pytest.raises(InputError) as info:
            check_spec(bad)
        assert str(info.value) == (
            f"--verifier {bad!r} is not a verifier spec; use one of: vlm:<hub id or local path>, "
            "openai:<model>, editscore:<id or path>, emulated, mine:<path>"
        )
    with pytest.raises(InputError, match="applies to openai:<model> only"):
        load_verifier("mine:x", base_url="http://localhost:1/v1")
