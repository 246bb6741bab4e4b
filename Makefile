# mobile-model: the two commands are `make mobile-model` and `make test`.
# Both bootstrap everything they need (venv, pip packages, Debian packages when root).

# The Python versions every pinned dependency has wheels for (setup.cfg's python_requires
# and classifiers say the same; tests/test_packaging.py checks). A new .venv is made with
# PYTHON when given, else with the first of python3, python3.11, python3.12, python3.13
# that is one of these.
PY_VERSIONS := 3.11 3.12 3.13
PYTHON ?=
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS_HASH := $(shell cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.deps-$(DEPS_HASH)
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONHASHSEED := 0
RECIPE ?= default
RECIPE_NAME  = $(basename $(notdir $(RECIPE)))
BASELINE    ?= baselines/$(RECIPE_NAME).json
COMPARE_ARGS ?=
PYTEST_ARGS ?=
# make test runs the suite in this many pytest-xdist workers, whole modules per worker
# (module fixtures are built once); 0 runs it in one process.
PYTEST_WORKERS ?= 2

.PHONY: mobile-model test lint unit fuzz device-test arm-runtime mediapipe-env system-deps bench check-regressions accept-baseline clean help

help:
	@echo "make mobile-model   build the embedded default recipe (RECIPE=path to override)"
	@echo "make test           the full test suite (what CI runs), after make lint"
	@echo "make lint           layering contracts (.importlinter), private and unresolved imports, ruff (pyproject.toml)"
	@echo "make fuzz           longer fuzzing of model loading and recipe parsing (FUZZ_EXAMPLES=5000)"
	@echo "make device-test    device_tests/ over a built recipe (RECIPE=...)"
	@echo "make arm-runtime    build/refresh the cached ARM userland, runtimes and qemu plugin"
	@echo "make mediapipe-env  build the cached MediaPipe environment (TFLite metadata writer, client check)"
	@echo "make bench          speed/size ratios and device instruction counts of a build (RECIPE=...)"
	@echo "make check-regressions build RECIPE and compare it with baselines/<recipe>.json (CI gate)"
	@echo "make accept-baseline  write baselines/<recipe>.json from the last build (review, then commit)"
	@echo "make clean          remove build/ (the venv and the ARM runtime cache stay)"

# (Re)install only when the dependency declaration changes. A new venv is 2.8 GiB
# (measured on Python 3.11); it is not started with less than 3 GiB free, so that a
# full disk gives one line instead of pip's OSError half-way through.
VENV_NEEDS_KB := 3145728
PY_MINOR := import sys; print(*sys.version_info[:2], sep=".")
$(STAMP):
	@if [ -x $(PY) ]; then \
	  v=$$($(PY) -c '$(PY_MINOR)'); \
	  case " $(PY_VERSIONS) " in *" $$v "*) ;; *) \
	    echo "error: $(VENV) is Python $$v; mobile-model supports Python $(PY_VERSIONS)" \
	         "(the pinned wheels exist for these only): remove $(VENV) and run make again" >&2; exit 1;; esac; \
	else \
	  py=; tried=; \
	  for p in $(or $(PYTHON),python3 $(addprefix python,$(PY_VERSIONS))); do \
	    v=$$($$p -c '$(PY_MINOR)' 2>/dev/null) || { tried="$$tried $$p (not found)"; continue; }; \
	    case " $(PY_VERSIONS) " in *" $$v "*) py=$$p; break;; esac; \
	    tried="$$tried $$p ($$v)"; \
	  done; \
	  if [ -z "$$py" ]; then \
	    echo "error: no supported Python to make $(VENV) with: mobile-model supports Python $(PY_VERSIONS)" \
	         "(the pinned wheels exist for these only); tried:$$tried. Install one, or name it: make PYTHON=/path/to/python3.X" >&2; \
	    exit 1; fi; \
	  free=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	  if [ -n "$$free" ] && [ "$$free" -lt $(VENV_NEEDS_KB) ]; then \
	    echo "error: $$((free / 1024)) MiB free on the file system of $(CURDIR); a new $(VENV) with the pinned" \
	         "packages (TensorFlow, tfmot, Ray) takes about 3 GiB: free some space (or move the checkout) and run make again" >&2; \
	    exit 1; fi; \
	  echo "creating $(VENV) with $$py (Python $$v)"; \
	  $$py -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.deps-* && touch $@

# Debian packages: qemu-user (emulated ARM), debootstrap (ARM userland),
# dataset-fashion-mnist (real data), llvm-19 (llvm-mc-19 and llvm-mca-19: LLVM's
# pipeline models price the recorded ARM blocks). Installed only when root and missing.
system-deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  for p in qemu-user debootstrap dataset-fashion-mnist gcc libglib2.0-dev llvm-19 openssh-client openssh-server; do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages (need qemu-user debootstrap dataset-fashion-mnist llvm-19 openssh-server)"; fi

arm-runtime: $(STAMP) system-deps
	$(PY) -m pipeline.devices.runtime build
	$(PY) -m pipeline.devices.host_twin build -q

# MediaPipe in a venv of its own (its absl-py conflicts with tfmot's pin): it writes
# the TFLite metadata of bundle/model.tflite, and its image classifier runs the bundle
# in the tests. Cached by key under ~/.cache/mobile-model/mediapipe-env/ (pip, PyPI).
mediapipe-env: $(STAMP)
	$(PY) -m pipeline.publish.mediapipe_env build -q

mobile-model: $(STAMP) system-deps mediapipe-env
	$(PY) -m pipeline.devices.runtime build
	$(VENV)/bin/mobile-model build $(RECIPE)

# Layering (.importlinter: models is a leaf, nothing imports pipeline.cli, ...), no
# private name imported across modules (tests/test_layering.py) and ruff's checks
# (pyproject.toml [tool.ruff]). Seconds; `make test` runs it first.
lint: $(STAMP)
	@$(VENV)/bin/lint-imports --no-cache || { echo "error: make lint: import layering broken (see above and .importlinter)" >&2; exit 1; }
	@$(PY) -m pytest tests/test_layering.py -q -p no:cacheprovider || { echo "error: make lint: tests/test_layering.py failed: a private name imported across modules, an import of a name that does not exist, or a module missing from .importlinter (see above)" >&2; exit 1; }
	@$(VENV)/bin/ruff check --no-cache pipeline models tests device_tests benchmarks conftest.py || { echo "error: make lint: ruff findings (see above; rules in pyproject.toml)" >&2; exit 1; }

# The whole suite: unit, integration (real training/conversion on tiny models)
# and device tests (real ARM runtime under qemu), after lint. Exit code 5 (no tests) fails.
# JUnit XML of the run goes to build/test-results/ (CI uploads it and shows it as checks);
# the 20 slowest tests are listed at the end.
TEST_RESULTS ?= build/test-results
test: $(STAMP) lint system-deps mediapipe-env
	$(PY) -m pipeline.devices.runtime build
	@mkdir -p $(TEST_RESULTS)
	$(PY) -m pytest tests device_tests -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 --junitxml=$(TEST_RESULTS)/pytest.xml $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc = 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

unit: $(STAMP)
	$(PY) -m pytest tests -m "not integration and not device" -q

# Fuzzing (tests/test_fuzz.py) with a larger budget and random seeds than `make test`:
# FUZZ_EXAMPLES scales every target (the reader gets 4x, the isolated loader 1/50).
# Prints Hypothesis' statistics per target; a failure shows its minimized input, which
# goes into tests/fuzz_regressions/ as a regression case.
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	MOBILE_MODEL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MOBILE_MODEL_FUZZ_RANDOM=1 \
	  $(PY) -m pytest tests/test_fuzz.py -p no:cacheprovider -q --hypothesis-show-statistics $(PYTEST_ARGS)

# device_tests/ over a full build of RECIPE (built first; cached when up to date).
device-test: $(STAMP) system-deps mediapipe-env
	$(PY) -m pipeline.devices.runtime build
	$(VENV)/bin/mobile-model build $(RECIPE) -q; rc=$$?; [ $$rc -le 1 ] || exit $$rc
	MOBILE_MODEL_BUILD_DIR=build/$$($(PY) -c "from pipeline.recipe.load import load_recipe; print(load_recipe('$(RECIPE)').build_name)") \
	  $(PY) -m pytest device_tests -q

bench: $(STAMP) system-deps
	$(PY) -m pipeline.devices.runtime build
	$(PY) -m benchmarks.build_bench $(RECIPE)

# Build RECIPE and gate it against its baseline: exit 1 on a regression or a missed
# budget, 2 on unusable input (e.g. no baseline yet: see baselines/README.md).
check-regressions: $(STAMP) system-deps mediapipe-env
	$(PY) -m pipeline.devices.runtime build
	@$(VENV)/bin/mobile-model build $(RECIPE) -q --out build/$(RECIPE_NAME); build_rc=$$?; \
	  if [ $$build_rc -gt 1 ]; then exit $$build_rc; fi; \
	  $(VENV)/bin/mobile-model compare $(BASELINE) build/$(RECIPE_NAME) $(COMPARE_ARGS) \
	    --junit build/$(RECIPE_NAME)/compare-junit.xml --markdown build/$(RECIPE_NAME)/compare.md; rc=$$?; \
	  if [ $$rc = 0 ] && [ $$build_rc != 0 ]; then echo "error: the build missed a budget (see above)" >&2; rc=$$build_rc; fi; \
	  exit $$rc

# Accept the last build of RECIPE as its baseline; review `git diff baselines/`, then commit.
accept-baseline: $(STAMP)
	$(VENV)/bin/mobile-model baseline build/$(RECIPE_NAME) $(BASELINE)

clean:
	rm -rf build
