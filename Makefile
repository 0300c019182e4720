# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra options for twistd chatd, e.g. make run ARGS="--listen tcp:9000"
ARGS ?=
# Extra options for pytest, e.g. make test PYTEST_ARGS="-k e2e -x"
PYTEST_ARGS ?=

.PHONY: run test install clean bench screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# An editable install: the default mode works (setup.cfg's package_dir puts
# the project root on sys.path, where twistd's plugin scan looks).
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

# The benchmark is a package of its own (bench/): its tests run here too.
$(VENV)/.installed-test: $(VENV)/.installed bench/pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]' -e bench
	touch $@

install: $(VENV)/.installed

# Persistent rooms are kept in var/chatd.db (ignored by git), unless ARGS
# names a store or a cluster (--redis keeps them in memory by default).
RUN_STORE := $(if $(findstring --store,$(ARGS))$(findstring --redis,$(ARGS)),,--store sqlite:var/chatd.db)

run: $(VENV)/.installed
	mkdir -p var
	$(BIN)/twistd --nodaemon --pidfile= chatd $(RUN_STORE) $(ARGS)

# The pure layer is kept mypy --strict clean (docs/development.md).
STRICT := chatd/core.py chatd/codec.py chatd/errors.py chatd/settings.py chatd/config.py chatd/ratelimit.py chatd/names.py \
	chatd/delivery/frames.py chatd/backplane/address.py chatd/admission.py chatd/rooms/state.py chatd/rooms/history.py \
	chatd/rooms/rules.py chatd/backplane/lines.py chatd/backplane/facts.py chatd/rooms/events.py \
	chatd/rooms/metering.py chatd/delivery/handout.py chatd/delivery/local.py chatd/replies.py chatd/rooms/store.py \
	chatd/rooms/lasting.py chatd/storage/schema.py chatd/delivery/direct.py chatd/rooms/many.py chatd/rooms/catchup.py

test: $(VENV)/.installed-test
	$(BIN)/python -m ruff check --select F,E9,B chatd tests twisted bench
	$(BIN)/python -m mypy --strict $(STRICT)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmark: chatd against the seed's design, websockets.broadcast() and
# Node ws, server on core 0 and load generator on core 1 (docs/performance.md).
# e.g. make bench BENCH_ARGS="--repeat 1 --scenarios fanout,max"
BENCH_ARGS ?=

$(VENV)/.installed-bench: $(VENV)/.installed bench/pyproject.toml
	$(BIN)/python -m pip install --quiet -e bench
	touch $@

bench/peers/node/node_modules: bench/peers/node/package.json bench/peers/node/package-lock.json
	cd bench/peers/node && npm ci --no-audit --no-fund --silent

bench: $(VENV)/.installed-bench bench/peers/node/node_modules
	$(BIN)/chatd-bench compare $(BENCH_ARGS)

# The documentation's screenshots, taken by the browser test (tests/test_web.py).
screenshots: $(VENV)/.installed-test
	CHATD_WRITE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/test_web.py -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache bench/peers/node/node_modules
