"""splits.json is tied to the data fingerprint; the shared trainer configs and the config layer."""

from __future__ import annotations

import json

import pytest
from helpers import FIXTURES

from ade_runtime.errors import InputError
from ade_train.calibrate import cli_main as calibrate_main
from ade_train.card import build_config
from ade_train.runconfig import load_run_config, parse_overrides
from ade_train.splits import SPLITS, SPLITS_FILE, load_splits, split_ids, write_splits

FIXTURE = FIXTURES / "testbed_small"


def test_splits_file_records_the_fingerprint_and_refuses_other_data(tmp_path):
    ids = {s: [f"{s}-1"] for s in SPLITS}
    path = write_splits(tmp_path, FIXTURE, "sha256:aaaa", seed=3, fractions=(0.7, 0.1, 0.1, 0.1), splits=ids)
    saved = json.loads(path.read_text())
    assert saved["data_fingerprint"] == "sha256:aaaa" and saved["seed"] == 3
    assert load_splits(tmp_path, "sha256:aaaa") == ids
    assert load_splits(tmp_path) == ids  # no fingerprint to check against: the ids as written
    with pytest.raises(InputError, match=r"splits\.json: field data_fingerprint .* another dataset"):
        load_splits(tmp_path, "sha256:bbbb")


def test_calibrate_refuses_the_splits_of_another_dataset(tmp_path, capsys):
    write_splits(tmp_path, "elsewhere", "sha256:other", 0, (0.7, 0.1, 0.1, 0.1), {s: [] for s in SPLITS})
    assert calibrate_main(["--data", str(FIXTURE), "--out", str(tmp_path), "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and SPLITS_FILE in err and "--force" in err


def test_split_ids_deterministic_and_fraction_checks():
    from ade_runtime.traces import load_records

    recs, _ = load_records(FIXTURE)
    assert split_ids(recs, seed=1) == split_ids(list(reversed(recs)), seed=1)
    with pytest.raises(ValueError, match="fractions"):
        split_ids(recs, (0.5, 0.5))


def test_trainer_presets_are_shared_and_job_keys_go_over_them():
    cpu = load_run_config("card")
    assert cpu["trainer"]["accelerator"] == "cpu" and cpu["trainer"]["devices"] == 1
    assert cpu["trainer"]["max_epochs"] == 40  # card.yaml's own key
    ddp = load_run_config("critique", trainer="ddp", overrides=["--trainer.devices=3"])
    assert ddp["trainer"]["strategy"] == "ddp" and ddp["trainer"]["devices"] == 3
    assert ddp["trainer"]["max_epochs"] == 4
    with pytest.raises(InputError, match="--trainer-config nope"):
        load_run_config("card", trainer="nope")


def test_overrides_read_exponents_as_numbers_and_print_config(capsys):
    assert parse_overrides(["--model.lr=1e-3", "--x", "2.5E+2", "--y=abc"]) == [
        (["model", "lr"], 0.001),
        (["x"], 250.0),
        (["y"], "abc"),
    ]
    cfg = build_config(["--data", str(FIXTURE), "--out", "o", "--model.lr=1e-4", "--print_config"])
    assert cfg["model"]["lr"] == 1e-4 and cfg["print_config"] is True
