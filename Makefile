# EasyTask developer entry points.  `make test` works on a fresh Debian machine (run as root).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check bench sysdeps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

demo: $(STAMP)
	$(VENV)/bin/easytask demo

test: sysdeps $(STAMP)
	$(PY) -m pytest -q

check: $(STAMP)
	$(VENV)/bin/ruff format --check easytask tests bench
	$(VENV)/bin/ruff check easytask tests bench
	$(VENV)/bin/mypy easytask

bench: $(STAMP)
	$(PY) bench/all.py

clean:
	rm -rf $(VENV) .easytask build dist
