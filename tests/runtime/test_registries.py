"""Backbones and verifiers are looked up by name in a registry (peft's ``register_peft_method``):
a registered one loads through the same door as the built-ins, an unknown name lists the known ones."""

from __future__ import annotations

import pytest

from ade_runtime.backbones import BACKBONE_LOADERS, BACKBONE_NAMES, load_backbone, register_backbone
from ade_runtime.errors import InputError


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
