# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEV_SECRET := dev-only-secret-change-me-0123456789abcdef

.PHONY: run test lint unit integration bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@echo "Kalami Gateway on http://127.0.0.1:$${GATEWAY_PORT:-3000} (stub backend unless BACKEND_MODE is set)."
	@echo "Get a token:   JWT_SECRET=$${JWT_SECRET:-$(DEV_SECRET)} $(BIN)/kalami-gateway token --sub me"
	@echo "Talk to it:    JWT_SECRET=$${JWT_SECRET:-$(DEV_SECRET)} $(BIN)/kalami-gateway talk --file utterance.wav"
	JWT_SECRET=$${JWT_SECRET:-$(DEV_SECRET)} BACKEND_MODE=$${BACKEND_MODE:-stub} \
	  $(BIN)/kalami-gateway serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q --durations=3

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

test: lint unit integration

bench: $(STAMP)
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
