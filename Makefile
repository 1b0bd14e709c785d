# audiosocket-gw: every target sets up (or reuses) its own virtualenv in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
ARGS   ?=

.PHONY: all venv demo run test lint bench soak clean

all: test

.DEFAULT_GOAL := all

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

## demo: start the real gateway on free ports, place simulated calls, print a report
demo: $(STAMP)
	$(BIN)/audiosocket-gw demo

## run: run the gateway in the foreground (ARGS="--backend openai ...")
run: $(STAMP)
	$(BIN)/audiosocket-gw serve $(ARGS)

## test: the whole test suite (real sockets, no network beyond loopback)
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

## lint: ruff + mypy (strict) on the package
lint: $(STAMP)
	$(BIN)/ruff check audiosocket_gw tests
	$(BIN)/mypy audiosocket_gw

## bench: each backend (echo, openai, twilio-stream) at 100, 200 and 400 calls, 30 s of
## steady state, 3 runs, gateway pinned to core 0 (~24 min; the estimate is printed at
## start), barge-in and mark echoes; then echo against `serve --workers 1` and
## `--workers 2` on PostgreSQL (~2 min; skipped with a message when PostgreSQL is
## unreachable). Quick: ARGS="--backends echo --calls 100 --seconds 10 --runs 1".
## README's table: audiosocket-gw bench --table bench/results.json
WORKERS_ARGS ?= --calls 100 200 400 --seconds 10
bench: $(STAMP)
	$(BIN)/audiosocket-gw bench --out bench/results.json $(ARGS)
	$(BIN)/audiosocket-gw bench --workers 1 2 --out bench/results.json $(WORKERS_ARGS)

## soak: 10 min of mixed calls with a fault every minute (ARGS="--minutes 3 --calls 60")
soak: $(STAMP)
	$(BIN)/audiosocket-gw soak --out bench/soak.json $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# deploy / undeploy (Asterisk integration) live in deploy.mk
-include deploy.mk
