# Two commands: `make test` and `make run`. Each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Without a CUDA GPU install the CPU build of torch (pip resolves torch==2.13.0
# to it here), never the multi-GB CUDA build.
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_CUDA),torch,torch==2.13.0)

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,train,trl]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q

run: $(STAMP)
	$(VENV)/bin/rollout-bandits run

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks/ -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
