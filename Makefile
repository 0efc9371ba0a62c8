# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Without an NVIDIA GPU take PyTorch's CPU build (about 200 MB; a local wheel where pip's find-links has one) instead of PyPI's CUDA one (several GB).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_EPOCHS ?= 8
DEMO_OUT ?= runs/demo

.PHONY: install data demo test docs bench clean

$(BIN)/vaekit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	elif $(BIN)/pip download -q --no-deps --no-index -d "$$(mktemp -d)" "torch==$(TORCH_VERSION)" >/dev/null 2>&1; then \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	else $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); fi
	$(BIN)/pip install -q -e ".[test,digits,docs]"
	@touch $@

install: $(BIN)/vaekit

# Fashion-MNIST comes from the Debian package when apt is there (offline), else vaekit downloads it.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true; fi

demo: install data
	rm -rf $(DEMO_OUT)
	$(BIN)/vaekit train --epochs $(DEMO_EPOCHS) --out $(DEMO_OUT)
	@# A quick estimate (1,000 test images, S=100), so the report opens on a number a paper's can stand beside.
	$(BIN)/vaekit evaluate $(DEMO_OUT) --test-subset 1000 --nll-samples 100 --no-quality --quiet --headline
	$(BIN)/vaekit report $(DEMO_OUT)
	@echo "pictures, metrics.csv, evaluation.json and report.html are in $(DEMO_OUT)"

test: install
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The HTML reference of the public API (pdoc) and the user guide, offline, into build/docs.
docs: install
	$(BIN)/python scripts/build_docs.py build/docs

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info
