# Two commands do everything on a fresh machine:
#   make demo   -> creates .venv, installs hf-salt, runs `hf-salt demo` on the embedded WikiText-2
#                  (models, results.json and curves.png go to ./hf-salt-demo/; `make clean` removes it)
#   make test   -> same set-up, then the whole test suite
#
# torch: the default set-up pins one release (TORCH=torch==2.13.0). On the CI machines this
# resolves to a CPU wheel on local disk; elsewhere pip takes the platform's default build of that
# release. Bring your own:  make demo TORCH=torch  (keeps whatever torch the venv has), or
# `pip install -e .` into an environment that already has torch (pyproject only asks torch>=2.4).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# the transformers release the suite is run on (pyproject.toml only asks for a range); `make test` also runs a
# subset on the range's lower bound, TRANSFORMERS_FLOOR, from an overlay folder (pure Python: quick to install)
TRANSFORMERS ?= transformers==5.24.0
TRANSFORMERS_FLOOR ?= 5.21.1
FLOOR_DIR := $(VENV)/transformers-floor
FLOOR_TESTS := tests/test_salt_trainer.py tests/test_output_path.py tests/test_losses.py tests/test_salt_ds.py \
	tests/test_step_by_step.py tests/test_hypercloning.py
EXTRAS ?= test
# DeepSpeed (ZeRO CPU tests; only `make test` needs it, so `make demo` never builds it) is an sdist: built
# against the venv's torch (--no-build-isolation: no CUDA torch pulled into an isolated build), without CUDA
# ops, with its CPU shared-memory comm op compiled ahead of time (else the first gloo run JIT-compiles it for
# minutes). `make test DEEPSPEED=` skips it.
DEEPSPEED ?= deepspeed==0.19.8
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.hf-salt-installed
DS_STAMP := $(VENV)/.hf-salt-deepspeed
# where `hf-salt demo` writes by default (its --output_dir): removed by `make clean`
DEMO_DIR ?= hf-salt-demo

.PHONY: demo test test-floor lint install clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[$(EXTRAS)]" "$(TRANSFORMERS)"
	@touch $@

$(DS_STAMP): $(STAMP)
	$(if $(DEEPSPEED),DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(PIP) install --no-build-isolation "$(DEEPSPEED)")
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hf-salt demo $(ARGS)

test: $(if $(DEEPSPEED),$(DS_STAMP),$(STAMP))
	$(PY) -m pytest -n 2 --durations=15 tests $(ARGS)
	$(if $(TRANSFORMERS_FLOOR),$(MAKE) --no-print-directory test-floor)

# the declared lower bound of transformers (pyproject.toml) on a subset of the suite
test-floor: $(STAMP)
	@test -f $(FLOOR_DIR)/.transformers-$(TRANSFORMERS_FLOOR) || { rm -rf $(FLOOR_DIR) && \
		$(PIP) install --target $(FLOOR_DIR) "transformers==$(TRANSFORMERS_FLOOR)" httpx && \
		touch $(FLOOR_DIR)/.transformers-$(TRANSFORMERS_FLOOR); }
	PYTHONPATH=$(FLOOR_DIR) $(PY) -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_FLOOR)', transformers.__version__"
	PYTHONPATH=$(FLOOR_DIR) $(PY) -m pytest -n 2 -q $(FLOOR_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_salt tests benchmarks examples
	$(VENV)/bin/ruff format --check hf_salt tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info outputs $(DEMO_DIR)
