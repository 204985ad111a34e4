# lvlm-kit: `make reproduce` runs every notebook on the embedded testbed, `make test` runs
# the whole suite. Both create .venv when it is missing.
#
# TORCH is the pip requirement used for PyTorch. The default leaves pip free to pick your
# platform's normal build (CUDA on Linux); CI passes TORCH=torch==2.13.0 for a CPU wheel.
TORCH  ?= torch
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A second environment with torch and a torchvision built for it: the processors of
# Mistral 3 / Pixtral exist only with torchvision, and the tests there check that the kit's
# processors without torchvision insert the same image tokens as transformers' own.
TORCHVISION ?= torch torchvision
TV_VENV := .venv-tv
TV_PY   := $(TV_VENV)/bin/python
TV_STAMP := $(TV_VENV)/.installed

.PHONY: env test test-torchvision unit lint reproduce pin notebooks clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check lvlm_kit tests benchmarks notebooks
	$(PY) -m pytest -q -n 2 --timeout=600 --durations=10 tests -m "not kernels"
	$(PY) -m pytest -q --timeout=600 --durations=5 tests -m kernels
	$(MAKE) test-torchvision

$(TV_STAMP): pyproject.toml
	test -x $(TV_PY) || $(PYTHON) -m venv $(TV_VENV)
	$(TV_PY) -m pip install -q $(TORCHVISION)
	$(TV_PY) -m pip install -q -e ".[families,notebooks]" pytest pytest-timeout
	touch $(TV_STAMP)

test-torchvision: $(TV_STAMP)
	$(TV_PY) -m pytest -q -p no:cacheprovider --timeout=600 tests/test_families.py \
		-k "torchvision or mistral3"

unit: $(STAMP)
	$(PY) -m pytest -q -n 2 --timeout=600 tests -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check lvlm_kit tests benchmarks notebooks
	$(PY) -m ruff format --check lvlm_kit tests benchmarks notebooks

reproduce: $(STAMP)
	$(PY) -m lvlm_kit.reproduce --output outputs

# After a reproduce whose numbers were reviewed: pin them (tests/expected_metrics.json),
# rewrite the README's results table and refresh its gallery (docs/gallery).
pin: $(STAMP)
	$(PY) tests/pin.py outputs

# The notebooks are paired with jupytext: edit either the .ipynb (Jupyter) or the .py twin,
# then sync the other side.
notebooks: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.ipynb

clean:
	rm -rf outputs .pytest_cache
