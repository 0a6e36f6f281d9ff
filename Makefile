# sarathi-serve: `make up` starts the whole system, `make test` runs the tests.
#
# Test markers (pyproject.toml [tool.pytest.ini_options]):
#   slow  long runs (the chaos soak, full benchmark grids, long e2e runs): deselected by
#         `make test`, run by `make test-all`
#   gpu   needs a CUDA device: deselected by `make test` and `make test-all`, run by
#         `make test-gpu` (which fails on a machine without one)
# Every skipped test is named with its reason at the end of a run (tests/conftest.py);
# with SARATHI_SKIPPED_FILE=PATH the list is also written there (.ci/run prints it).
PYTHON ?= python3
STAMP := build/.setup-done
ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: setup up test test-all test-gpu lint protos

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	@mkdir -p build && touch $(STAMP)

setup: $(STAMP)

up: $(STAMP)  ## set up, then start Redis + scheduler + worker + gateway (Ctrl-C stops them)
	$(PYTHON) -m sarathi_serve.cli.main up $(ARGS)

test: $(STAMP)  ## the default test run (CI): everything but `slow` and `gpu` tests
	$(PYTHON) -m pytest $(ARGS)

test-all: $(STAMP)  ## every test but the `gpu` ones, `slow` ones included
	$(PYTHON) -m pytest -m "not gpu" $(ARGS)

test-gpu: $(STAMP)  ## on a CUDA machine: the `gpu` tests, then the GPU check (build/gpu_check.json)
	@$(PYTHON) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: no CUDA device')"
	$(PYTHON) -m pytest -m gpu $(ARGS)
	$(PYTHON) -m sarathi_serve.bench.gpu_check --out build $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check services tests bench
	$(PYTHON) -m ruff format --check services tests bench
	$(PYTHON) -m mypy services bench

protos: $(STAMP)  ## regenerate services/protocol/ from protos/sarathi/v1/
	$(PYTHON) -m sarathi_serve.protocol.codegen
