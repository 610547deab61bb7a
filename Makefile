# ADE: every target installs what it needs first, so a fresh clone needs only `make <target>`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# CPU build on these machines; override e.g. TORCH_SPEC='torch==2.5.1' or TORCH_SPEC='torch' on a GPU host.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,diffusers,minilm,serve,dev
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(EXTRAS)' | md5sum | cut -c1-8)

DATA ?= data/sample
OUT ?= checkpoints/card
SEED ?= 0

.PHONY: install test test-fast lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow" -x

lint: install
	$(PY) -m ruff check ade_runtime ade_train tests
	$(PY) -m ruff format --check ade_runtime ade_train tests

format: install
	$(PY) -m ruff format ade_runtime ade_train tests
	$(PY) -m ruff check --fix ade_runtime ade_train tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# ---- data, training, benchmarks (see README) ----
.PHONY: sample-data train-card train-critique calibrate train bench

sample-data: install
	@test -f $(DATA)/.complete || $(VENV)/bin/ade-testbed generate --out $(DATA) --seed $(SEED)

# Testbed benchmark: trains into checkpoints/bench if needed, replays every policy on a shifted
# held-out set, runs the live loop and writes docs/results/ (report.md, report.json, plots).
BENCH_OUT ?= docs/results
# Bench parts (ade_train/bench/parts.py) are measured apart, each by `make bench-<part>`, and folded into
# report.md; `make bench` runs them all first. A part adds itself with `BENCH_PARTS += <module>`.
BENCH_PARTS :=
bench: install
	$(foreach part,$(BENCH_PARTS),$(PY) -m ade_train.bench.$(part) --out $(BENCH_OUT) &&) true
	$(PY) -m ade_train.bench.run --data $(DATA) --out $(BENCH_OUT) --seed $(SEED)

# Re-render report.md from report.json and the parts (after re-measuring one part alone).
.PHONY: bench-report
bench-report: install
	$(PY) -m ade_train.bench.run --report-only --out $(BENCH_OUT)

# Trace integrity (docs/traces.md): writer open on 10k records, all-or-nothing writes vs two-step.
BENCH_PARTS += trace_integrity
.PHONY: bench-trace-integrity
bench-trace-integrity: install
	$(PY) -m ade_train.bench.trace_integrity --out $(BENCH_OUT)
	$(MAKE) bench-report

# Calibration (docs/calibration.md): calibrated P(pass) and the policy thresholds, chosen by replay on
# the calibration split with the CARD / critique already exported in $(OUT)/export; merges into it.
TARGET_FRACTION ?= 1.0
calibrate: install
	$(VENV)/bin/ade-train calibrate --data $(DATA) --out $(OUT) --target-fraction $(TARGET_FRACTION)

# CARD (docs/training.md): trains on $(DATA) into $(OUT), exports to $(OUT)/export; the default DATA
# (the testbed sample) is generated first when missing. Rerun = resume / re-export; FORCE=1 retrains.
CARD_DATA_DEP = $(if $(filter data/sample,$(DATA)),sample-data)
# TRAINER=ddp (or a YAML file) picks the shared Lightning Trainer config, ade_train/configs/trainer/.
TRAIN_FLAGS = $(if $(FORCE),--force) $(if $(TRAINER),--trainer-config $(TRAINER))
train-card: install $(CARD_DATA_DEP)
	$(VENV)/bin/ade-train card --data $(DATA) --out $(OUT) --seed $(SEED) $(TRAIN_FLAGS)

# Every predictor into one OUT, in order: CARD, critique head, calibration (one merged export).
train: install $(CARD_DATA_DEP)
	$(VENV)/bin/ade-train card --data $(DATA) --out $(OUT) --seed $(SEED) $(TRAIN_FLAGS)
	$(VENV)/bin/ade-train critique --data $(DATA) --out $(OUT) --seed $(SEED) $(TRAIN_FLAGS)
	$(VENV)/bin/ade-train calibrate --data $(DATA) --out $(OUT) --seed $(SEED)

# Critique head (docs/critique.md): a tiny DINOv2 trained end to end with the head on the testbed's
# attempt images (any DINOv2 id/path frozen: ENCODER=facebook/dinov2-small); exports into $(OUT)/export.
CRITIQUE_FLAGS = $(if $(ENCODER),--encoder $(ENCODER))
train-critique: install $(if $(filter data/sample,$(DATA)),sample-data)
	$(VENV)/bin/ade-train critique --data $(DATA) --out $(OUT) --seed $(SEED) $(CRITIQUE_FLAGS) $(TRAIN_FLAGS)

# GPU smoke (docs/backbones.md): FLUX.1 Kontext with real weights on a CUDA host, one JSON line (parity,
# ADE vs Best-of-4 NFE and time, peak GPU memory, calls saved by pruning, preview error, SRM overhead).
# Prints "skipped: no CUDA device" and exits 0 elsewhere. MODEL=dir-or-id, PREDICTORS=$(OUT)/export.
.PHONY: gpu-smoke
gpu-smoke: install
	$(PY) -m ade_train.bench.gpu_smoke $(if $(MODEL),--model $(MODEL)) $(if $(PREDICTORS),--predictors $(PREDICTORS))
