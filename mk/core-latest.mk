# The core library on the newest TensorFlow / Keras, on Python 3.12 (Colab's Python), no TFX.
# Included from the Makefile:  include mk/core-latest.mk  (uses its `data` target)
#
#   make test-core-latest    create .venv-tf-latest if missing, run the core tests there
#   make lock-core-latest    re-resolve requirements/lock-py312-tf-latest.txt and the Colab base
#   make venv-colab          .venv-colab: a Colab-like base only (tensorflow, matplotlib, pandas,
#                            ipykernel; no cnnrnn-tf) for tests/test_notebooks.py
#
# The TFX stack pins TensorFlow 2.16 (see BUILD.md); this target checks that
# `pip install cnnrnn-tf` alone works on current TensorFlow, as in Colab.
# pyenv's 3.12.1 is found through .python-version (mk/need_python.sh, mk/bootstrap.mk).

CORE_LATEST_PYTHON ?= 3.12
CORE_LATEST_VENV ?= .venv-tf-latest
CORE_LATEST_PY := $(CORE_LATEST_VENV)/bin/python
CORE_LATEST_LOCK := requirements/lock-py312-tf-latest.txt
CORE_LATEST_TESTS ?= tests/test_models.py tests/test_beam_search.py tests/test_metrics.py \
	tests/test_dataset.py tests/test_encoders.py tests/test_training_export.py \
	tests/test_cli.py $(wildcard tests/test_data_*.py) tests/test_finetune.py tests/test_report.py
COLAB_VENV ?= .venv-colab
COLAB_LOCK := requirements/lock-py312-colab.txt


.PHONY: test-core-latest lock-core-latest venv-core-latest venv-colab

$(CORE_LATEST_VENV)/.installed: $(CORE_LATEST_LOCK) setup.py | $(UV)
	$(call make_venv,$(CORE_LATEST_VENV),$(CORE_LATEST_PYTHON))
	$(UV) pip install --python $(CORE_LATEST_PY) -r $(CORE_LATEST_LOCK)
	$(UV) pip install --python $(CORE_LATEST_PY) --no-deps -e .
	@touch $@

# No `-e .` here: the notebook's install cell must be what installs the package.
$(COLAB_VENV)/.installed: $(COLAB_LOCK) | $(UV)
	$(call make_venv,$(COLAB_VENV),$(CORE_LATEST_PYTHON))
	$(UV) pip install --python $(COLAB_VENV)/bin/python -r $(COLAB_LOCK)
	@touch $@

venv-core-latest: $(CORE_LATEST_VENV)/.installed

venv-colab: $(COLAB_VENV)/.installed

test-core-latest: venv-core-latest data
	$(CORE_LATEST_PY) -m pytest -p no:xdist $(CORE_LATEST_TESTS) $(PYTEST_ARGS)

lock-core-latest: | $(UV)
	$(UV) pip compile --python-version $(CORE_LATEST_PYTHON) requirements/core-latest.in -o $(CORE_LATEST_LOCK)
	$(UV) pip compile --python-version $(CORE_LATEST_PYTHON) requirements/colab.in \
	  -c $(CORE_LATEST_LOCK) -o $(COLAB_LOCK)
