# The core library on the newest TensorFlow / Keras (Python 3.11, no TFX).
# Included from the Makefile:  include mk/core-latest.mk  (uses its `data` target)
#
#   make test-core-latest    create .venv-tf-latest if missing, run the core tests there
#   make lock-core-latest    re-resolve requirements/lock-py311-tf-latest.txt
#
# The TFX stack pins TensorFlow 2.16 (see BUILD.md); this target checks that
# `pip install cnnrnn-tf` alone works on current TensorFlow, as in Colab.

CORE_LATEST_PYTHON ?= 3.11
CORE_LATEST_VENV ?= .venv-tf-latest
CORE_LATEST_PY := $(CORE_LATEST_VENV)/bin/python
CORE_LATEST_LOCK := requirements/lock-py311-tf-latest.txt
CORE_LATEST_TESTS ?= tests/test_models.py tests/test_beam_search.py tests/test_metrics.py \
	tests/test_dataset.py tests/test_encoders.py tests/test_training_export.py \
	tests/test_cli.py $(wildcard tests/test_data_*.py) tests/test_finetune.py tests/test_report.py

.PHONY: test-core-latest lock-core-latest venv-core-latest

$(CORE_LATEST_VENV)/.installed: $(CORE_LATEST_LOCK) setup.py
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -x $(CORE_LATEST_PY) || uv venv --seed --python $(CORE_LATEST_PYTHON) $(CORE_LATEST_VENV)
	uv pip install --python $(CORE_LATEST_PY) -r $(CORE_LATEST_LOCK)
	uv pip install --python $(CORE_LATEST_PY) --no-deps -e .
	@touch $@

venv-core-latest: $(CORE_LATEST_VENV)/.installed

test-core-latest: venv-core-latest data
	$(CORE_LATEST_PY) -m pytest -p no:xdist $(CORE_LATEST_TESTS) $(PYTEST_ARGS)

lock-core-latest:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv pip compile --python-version $(CORE_LATEST_PYTHON) requirements/core-latest.in -o $(CORE_LATEST_LOCK)
