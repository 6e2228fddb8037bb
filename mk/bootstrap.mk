# The tools every target needs, set up without touching the system Python or ~/.local.
# Included first from the Makefile.
#
# uv: the one on PATH, else a pinned uv unpacked under $(TOOLS) by mk/get_uv.py (standard
# library only: works where python3 is externally managed (PEP 668) and has no pip or venv).
# Pythons: mk/need_python.sh finds one on PATH, or installs uv's managed Python where the
# network allows; otherwise it names what to install. uv itself never downloads a Python
# behind a target's back (UV_PYTHON_DOWNLOADS=never for every target).

TOOLS ?= .tools
UV ?= $(or $(shell command -v uv 2>/dev/null),$(TOOLS)/bin/uv)
export UV_PYTHON_DOWNLOADS := never

$(TOOLS)/bin/uv:
	@command -v python3 >/dev/null 2>&1 || { echo "error: no python3 on PATH: install python3 (Debian/Ubuntu: apt-get install python3) and run make again" >&2; exit 1; }
	@python3 mk/get_uv.py $(TOOLS) >/dev/null

# $(call make_venv,DIR,PYTHON_VERSION): creates venv DIR (with pip inside) unless it is
# there with that Python (an older .venv-tf-latest was Python 3.11).
define make_venv
	@$(1)/bin/python -c 'import sys; sys.exit(sys.version.split(".")[:2] != "$(2)".split("."))' 2>/dev/null \
	  || { sh mk/need_python.sh $(UV) $(2) && rm -rf $(1) && $(UV) venv --seed --python $(2) $(1); }
endef
