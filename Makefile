# sarathi-serve: `make up` starts the whole system, `make test` runs the tests.
PYTHON ?= python3
STAMP := build/.setup-done
ARGS ?=

.PHONY: setup up test test-all lint protos

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	@mkdir -p build && touch $(STAMP)

setup: $(STAMP)

up: $(STAMP)  ## set up, then start Redis + scheduler + worker + gateway (Ctrl-C stops them)
	$(PYTHON) -m sarathi_serve.cli.main up $(ARGS)

test: $(STAMP)  ## the default test run (CI): everything but `slow` and `gpu` tests
	$(PYTHON) -m pytest $(ARGS)

test-all: $(STAMP)  ## every test, slow ones included (gpu ones skip without a GPU)
	$(PYTHON) -m pytest -m "not gpu" $(ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check services tests bench
	$(PYTHON) -m ruff format --check services tests bench
	$(PYTHON) -m mypy services

protos: $(STAMP)  ## regenerate services/protocol/ from protos/sarathi/v1/
	$(PYTHON) -m sarathi_serve.protocol.codegen
