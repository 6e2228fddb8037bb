# The two commands of the README:
#   make run    the main job on the built-in default data
#   make test   the test suite (what .ci/run calls)
# Each does its own setup: uv (mk/bootstrap.mk), the virtual environment (Python
# 3.10 + the locked TFX 1.16 stack) and the default data (Debian's
# dataset-fashion-mnist) when they are missing.

PYTHON_VERSION ?= 3.10
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock-py310.txt
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORK ?= runs/default
PYTEST_ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: help venv data run test test-all lock bench clean

include mk/bootstrap.mk

help:
	@echo "make run    train + evaluate CNN-RNN and the BCE baseline on the default data"
	@echo "make test   run the test suite"
	@echo "make lock   re-resolve $(LOCK) from requirements/full.in"

# --- setup -------------------------------------------------------------
$(VENV)/.installed: $(LOCK) setup.py | $(UV)
	$(call make_venv,$(VENV),$(PYTHON_VERSION))
	$(UV) pip install --python $(PY) -r $(LOCK)
	$(UV) pip install --python $(PY) --no-deps -e .
	@touch $@

venv: $(VENV)/.installed

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Debian's dataset-fashion-mnist (the default data)"; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: could not install dataset-fashion-mnist; will try keras.datasets"; \
	else \
	  echo "note: $(FMNIST_DIR) missing; run 'sudo apt-get install dataset-fashion-mnist' (falls back to keras.datasets when online)"; \
	fi

lock: | $(UV)
	$(UV) pip compile --python-version $(PYTHON_VERSION) requirements/full.in -o $(LOCK)

# --- the main job ------------------------------------------------------
run: venv data
	$(PY) -m cnnrnn_tf.cli main-job --work-dir $(WORK)

# --- tests -------------------------------------------------------------
# The whole suite on the pinned TFX stack, then the core tests on the newest
# TensorFlow / Keras (mk/core-latest.mk), as CI runs them.
test: venv data venv-colab
	$(PY) -m pytest -n 2 --dist loadfile tests $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-core-latest

include mk/core-latest.mk

bench: venv data
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs build dist *.egg-info $(TOOLS)
