#!/bin/sh
# mk/need_python.sh UV VERSION: succeeds when uv can use a Python VERSION: one on PATH
# (pyenv shims included) or one of uv's managed Pythons, which it downloads where the network
# allows (CNNRNN_PYTHON_DOWNLOADS=never forbids that). Otherwise one line names what to install.
uv=$1
version=$2
if UV_PYTHON_DOWNLOADS=never "$uv" python find "$version" >/dev/null 2>&1; then
  exit 0
fi
if [ "${CNNRNN_PYTHON_DOWNLOADS:-automatic}" != never ] \
   && UV_PYTHON_DOWNLOADS=automatic "$uv" python install "$version" >/dev/null 2>&1; then
  echo "Python $version: not on PATH, installed uv's managed Python $version" >&2
  exit 0
fi
echo "error: Python $version is not on PATH and uv could not download it: install python$version (Debian/Ubuntu: apt-get install python$version, or pyenv install $version) and run make again" >&2
exit 1
