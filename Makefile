# Stoic: `make run` starts a local cluster with the examples; `make test` runs lint, types and tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest proto bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stoic up --demo examples/hello.py examples/faulty.py

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check runtime supervisor tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

proto: $(STAMP)
	rm -rf runtime/_proto/stoic
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=runtime/_proto --grpc_python_out=runtime/_proto --pyi_out=runtime/_proto proto/stoic/v1/*.proto
	sed -i 's/^from stoic\.v1 import/from runtime._proto.stoic.v1 import/' runtime/_proto/stoic/v1/*.py runtime/_proto/stoic/v1/*.pyi
	touch runtime/_proto/stoic/__init__.py runtime/_proto/stoic/v1/__init__.py

bench: $(STAMP)
	$(BIN)/stoic bench

clean:
	rm -rf $(VENV) .stoic
