# ADE: every target installs what it needs first, so a fresh clone needs only `make <target>`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# CPU build on these machines; override e.g. TORCH_SPEC='torch==2.5.1' or TORCH_SPEC='torch' on a GPU host.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,diffusers,minilm,serve,ray,dev
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

# The testbed sample: 3000 requests with their full attempt grid (CARD and calibration read every
# record); attempt images are stored for every SAMPLE_IMAGE_EVERY-th request, enough for the critique's
# 8000 distinct training images (SAMPLE_IMAGE_EVERY=1: all, about twice the disk and 20% more time).
SAMPLE_REQUESTS ?= 3000
SAMPLE_IMAGE_EVERY ?= 2
# Phrasing families of the sample's instructions (ade_runtime/testbed/phrasing.py); the held-out family
# (wish) stays out so `make bench-card-phrasing` can measure CARD on phrasing it never saw.
SAMPLE_PHRASING ?= grammar,polite,casual
sample-data: install
	@test -f $(DATA)/.complete || $(VENV)/bin/ade-testbed generate --out $(DATA) --seed $(SEED) \
		--requests $(SAMPLE_REQUESTS) --image-every $(SAMPLE_IMAGE_EVERY) --phrasing $(SAMPLE_PHRASING)

# Testbed benchmark: trains into checkpoints/bench if needed, replays every policy on a shifted
# held-out set, runs the live loop and writes docs/results/ (report.md, report.json, plots).
BENCH_OUT ?= docs/results
# Bench parts (ade_train/bench/parts.py) are measured apart, each by `make bench-<part>`, and folded into
# report.md; `make bench` runs them all first. A part adds itself with `BENCH_PARTS += <module>`.
BENCH_PARTS :=
bench: install
	$(foreach part,$(BENCH_PARTS),$(PY) -m ade_train.bench.$(part) --out $(BENCH_OUT) &&) true
	$(PY) -m ade_train.bench.run --data $(DATA) --out $(BENCH_OUT) --seed $(SEED)

# The newcomer's first hour (ade_train/bench/setup_time.py): make train-card and make train timed in a fresh
# clone with this venv (about 15 minutes on 2 cores), the first export's budgets, CARD on a busy machine.
BENCH_PARTS += setup_time
.PHONY: bench-setup
bench-setup: install
	$(PY) -m ade_train.bench.setup_time --out $(BENCH_OUT) --venv $(abspath $(VENV))
	$(MAKE) bench-report

# ade-serve under load and past capacity on loopback (docs/serving.md; about 2 minutes on 2 cores).
BENCH_PARTS += serve_load
.PHONY: bench-serve-load
bench-serve-load: install
	$(PY) -m ade_train.bench.serve_load --out $(BENCH_OUT)
	$(MAKE) bench-report

# Savings by default (ade_train/bench/savings.py): make train's export live on 500 fresh shifted requests beside
# its reference and Best-of-1/2/4/8, and the certificate's coverage on independent draws (about 20 minutes).
BENCH_PARTS += savings
.PHONY: bench-savings
bench-savings: install
	$(PY) -m ade_train.bench.savings --out $(BENCH_OUT)
	$(MAKE) bench-report

# A bench on your own traces (ade_train/bench/domain.py, docs/calibration.md): `make bench-domain DATA=DIR`
# holds a quarter of DIR's requests out, runs make train on the rest (into checkpoints/domain-<name>) and
# reports the certificate and the replay against Best-of-N there (WORK/report). Without DATA it benches
# the testbed's world B, a stand-in for a user's new domain with other settings (about 25 minutes), into
# the bench report.
BENCH_PARTS += domain
.PHONY: bench-domain
bench-domain: install
ifeq ($(DATA),data/sample)
	$(PY) -m ade_train.bench.domain --out $(BENCH_OUT)
	$(MAKE) bench-report
else
	$(PY) -m ade_train.bench.domain --data $(DATA)
endif

# CARD on phrasing it never saw (ade_train/bench/card_phrasing.py, docs/training.md): 1,000 fresh requests in
# their own words and rewritten in the held-out family; CARD vs the inferred prior vs a constant budget.
BENCH_PARTS += card_phrasing
.PHONY: bench-card-phrasing
bench-card-phrasing: install
	$(PY) -m ade_train.bench.card_phrasing --out $(BENCH_OUT)
	$(MAKE) bench-report

# Re-render report.md from report.json and the parts (after re-measuring one part alone).
# Ray part (docs/scaling.md): ade-collect without Ray, --ray on 1 and 2 workers, the same requests side by side.
BENCH_PARTS += ray_collect
.PHONY: bench-ray-collect
bench-ray-collect: install
	$(PY) -m ade_train.bench.ray_collect --out $(BENCH_OUT)
	$(MAKE) bench-report

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
	$(VENV)/bin/ade-train calibrate --data $(DATA) --out $(OUT) --target-fraction $(TARGET_FRACTION) $(CALIBRATE_ARGS)

# CARD (docs/training.md): trains on $(DATA) into $(OUT), exports to $(OUT)/export; the default DATA
# (the testbed sample) is generated first when missing. Rerun = resume / re-export; FORCE=1 retrains.
CARD_DATA_DEP = $(if $(filter data/sample,$(DATA)),sample-data)
# TRAINER=ddp (or a YAML file) picks the shared Lightning Trainer config, ade_train/configs/trainer/.
TRAIN_FLAGS = $(if $(FORCE),--force) $(if $(TRAINER),--trainer-config $(TRAINER))
# Extra flags per job, e.g. CARD_ARGS='--max-epochs 5' CRITIQUE_ARGS='--data.max_train_attempts=2000'.
CARD_ARGS ?=
CRITIQUE_ARGS ?=
CALIBRATE_ARGS ?=
train-card: install $(CARD_DATA_DEP)
	$(VENV)/bin/ade-train card --data $(DATA) --out $(OUT) --seed $(SEED) $(TRAIN_FLAGS) $(CARD_ARGS)

# Every predictor into one OUT, in order: CARD, critique head, calibration (one merged export).
train: install $(CARD_DATA_DEP)
	$(VENV)/bin/ade-train card --data $(DATA) --out $(OUT) --seed $(SEED) $(TRAIN_FLAGS) $(CARD_ARGS)
	$(VENV)/bin/ade-train critique --data $(DATA) --out $(OUT) --seed $(SEED) $(TRAIN_FLAGS) $(CRITIQUE_ARGS)
	$(VENV)/bin/ade-train calibrate --data $(DATA) --out $(OUT) --seed $(SEED) $(CALIBRATE_ARGS)

# Critique head (docs/critique.md): a tiny DINOv2 trained end to end with the head on the testbed's
# attempt images (any DINOv2 id/path frozen: ENCODER=facebook/dinov2-small); exports into $(OUT)/export.
CRITIQUE_FLAGS = $(if $(ENCODER),--encoder $(ENCODER))
train-critique: install $(if $(filter data/sample,$(DATA)),sample-data)
	$(VENV)/bin/ade-train critique --data $(DATA) --out $(OUT) --seed $(SEED) $(CRITIQUE_FLAGS) $(TRAIN_FLAGS) $(CRITIQUE_ARGS)

# GPU smoke (docs/backbones.md): FLUX.1 Kontext with real weights on a CUDA host, one JSON line (parity,
# ADE vs Best-of-4 NFE and time, peak GPU memory, calls saved by pruning, preview error, SRM overhead).
# Prints "skipped: no CUDA device" and exits 0 elsewhere. MODEL=dir-or-id, PREDICTORS=$(OUT)/export.
.PHONY: gpu-smoke
gpu-smoke: install
	$(PY) -m ade_train.bench.gpu_smoke $(if $(MODEL),--model $(MODEL)) $(if $(PREDICTORS),--predictors $(PREDICTORS))

# GPU check (docs/backbones.md, "GPU check"): FLUX.1 Kontext, then Qwen-Image-Edit, at their published
# sizes with random bf16 weights built on the GPU (no weights, no network), through ADE's adapters: one
# JSON line per step, a summary line last; under 9 minutes on one H100/H200 (BUDGET_S caps it). Without
# CUDA it runs the same steps at tiny sizes on the CPU (what CI tests).
BUDGET_S ?= 540
.PHONY: gpu-check gpu-wheels
gpu-check: install
	$(PY) -m ade_train.bench.gpu_check --budget-s $(BUDGET_S)

# Wheels a GPU host without network needs beside its own CUDA torch (diffusers, transformers, accelerate and
# their dependencies, pinned to this venv's versions; about 62 MB for CPython 3.11 x86_64) into GPU_WHEELS.
GPU_WHEELS ?= build/gpu-wheels
gpu-wheels: install
	mkdir -p $(GPU_WHEELS)
	$(PY) -m ade_train.bench.gpu_check --requirements > $(GPU_WHEELS)/requirements.txt
	$(PY) -m pip download --quiet --no-deps -d $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt
