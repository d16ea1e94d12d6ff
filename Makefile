# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision from PyPI only imports beside the matching torch; pin the pair.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ORT ?= cpu
STAMP := $(VENV)/.hms-installed
DEMO_DIR ?= demo_run
CORES ?= 2

.PHONY: venv demo test clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[$(ORT),test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/snakemake --directory $(DEMO_DIR) --configfile config/demo.yaml --cores $(CORES)
	@echo "Results: $(DEMO_DIR)/training_results.json  models: $(DEMO_DIR)/models/onnx/"

test: venv
	$(PY) -m pytest -q -rs

clean-demo:
	rm -rf $(DEMO_DIR)
