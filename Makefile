# steplab — the two commands: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

HFSTAMP := $(VENV)/.installed-hf-lora-postgres

.PHONY: install install-hf run test lint clean

install: $(STAMP)

# The test suite also runs the Hugging Face export, import and dataset tests (the `hf` extra),
# the LoRA tests (the `lora` extra: peft) and the
# many-worker tuning test on a PostgreSQL server (the `postgres` extra: the psycopg2 driver).
install-hf: $(HFSTAMP)

$(HFSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,hf,lora,postgres]"
	touch $(HFSTAMP)

# Re-install only when the package metadata changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/steplab train --run-dir runs/default --overwrite
	$(BIN)/steplab eval runs/default
	$(BIN)/steplab sample runs/default --prompt "ROMEO:" --max-new-tokens 300

test: install install-hf
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
