# One venv, made on first use; every target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: dev test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Start the whole system on embedded defaults (Ctrl-C stops it).
dev: $(STAMP)
	$(VENV)/bin/todo dev

## Run every test (unit + integration on real servers started by the fixtures).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tododb tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/append.py

clean:
	rm -rf $(VENV) .tododb
