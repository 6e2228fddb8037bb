"""The two commands' bootstrap on a stock Linux (mk/bootstrap.mk, mk/get_uv.py, mk/need_python.sh).

Hermetic: a fake `python3` that refuses pip and venv as an externally managed Python does
(PEP 668), a uv wheel built here (its `uv` a shell script), a package index served on
localhost, and no environment build.
"""
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "0.13.9"
FAKE_UV = """#!/bin/sh
# A stand-in for uv: answers --version, and `python find` / `python install` from env vars.
case "$1 $2" in
  "--version "*) echo "uv {version} (fake)";;
  "python find") [ -n "$FAKE_UV_FINDS" ] && echo /fake/python$3 || exit 2;;
  "python install") [ -n "$FAKE_UV_INSTALLS" ] || {{ echo "error: download failed" >&2; exit 2; }};;
  *) echo "fake uv: $*" >> "$FAKE_UV_LOG";;
esac
"""
# What Debian 12's python3 answers to pip (PEP 668) and, without python3-venv, to venv.
FAKE_PYTHON3 = """#!/bin/sh
echo "$*" >> "{log}"
case "$1 $2" in
  "-m pip"|"-m ensurepip") echo "error: externally-managed-environment" >&2; exit 1;;
  "-m venv") echo "The virtual environment was not created successfully because ensurepip is not available." >&2; exit 1;;
esac
exec "{real}" "$@"
"""


def fake_wheel(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"uv-{VERSION}.data/scripts/uv", FAKE_UV.format(version=VERSION))
        z.writestr(f"uv-{VERSION}.data/scripts/uvx", "#!/bin/sh\n")
        z.writestr(f"uv-{VERSION}.dist-info/METADATA", f"Name: uv\nVersion: {VERSION}\n")
    return path


def real_python():
    """A plain interpreter for the fake python3 to hand over to (no venv needed)."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


@pytest.fixture
def stock(tmp_path):
    """PATH with only a PEP 668 python3, make and the base system; HOME in tmp_path."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    log = tmp_path / "python3.log"
    (fakebin / "python3").write_text(FAKE_PYTHON3.format(log=log, real=real_python()))
    (fakebin / "python3").chmod(0o755)
    path = f"{fakebin}:/usr/bin:/bin"
    if shutil.which("uv", path=path):
        pytest.skip("a uv is installed system-wide; the bootstrap would use it")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": path, "HOME": str(home), "FAKE_UV_LOG": str(tmp_path / "uv.log"),
           "LANG": "C.UTF-8"}
    return env, log, home


def test_make_fetches_uv_into_the_repo_without_pip_venv_or_home(tmp_path, stock):
    env, log, home = stock
    env["CNNRNN_UV_WHEEL"] = str(fake_wheel(tmp_path / f"uv-{VERSION}-py3-none-any.whl"))
    tools = tmp_path / "tools"
    out = subprocess.run(["make", "-s", "-C", REPO, f"TOOLS={tools}", f"{tools}/bin/uv"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    uv = tools / "bin" / "uv"
    assert os.access(uv, os.X_OK)
    assert subprocess.run([str(uv), "--version"], capture_output=True, text=True,
                          env=env).stdout.strip() == f"uv {VERSION} (fake)"
    calls = log.read_text().splitlines()
    assert calls and all("-m pip" not in c and "-m venv" not in c for c in calls), calls
    assert not (home / ".local").exists()
    assert list(home.iterdir()) == []


def test_make_with_a_refusing_python_names_no_pip(tmp_path, stock):
    """No wheel on disk and an index that does not answer: one line, and no pip attempt."""
    env, log, home = stock
    env["CNNRNN_UV_INDEX"] = "http://127.0.0.1:9/simple"
    tools = tmp_path / "tools"
    out = subprocess.run(["make", "-s", "-C", REPO, f"TOOLS={tools}", f"{tools}/bin/uv"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "install uv" in errors[0], out.stderr
    assert not (tools / "bin" / "uv").exists()
    assert "-m pip" not in log.read_text()


class _Index(http.server.BaseHTTPRequestHandler):
    files = {}

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def index(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    def publish(sha256):
        name = f"uv-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
        _Index.files = {
            "/simple/uv/": json.dumps({"files": [
                {"filename": f"uv-{VERSION}-py3-none-win_amd64.whl", "url": f"{base}/nope",
                 "hashes": {"sha256": "0"}},
                {"filename": name, "url": f"{base}/files/{name}", "hashes": {"sha256": sha256}},
            ]}).encode(),
            f"/files/{name}": wheel,
        }
        return f"{base}/simple"

    yield publish, hashlib.sha256(wheel).hexdigest()
    server.shutdown()


def _get_uv(dest, index_url):
    env = dict(os.environ, CNNRNN_UV_INDEX=index_url)
    env.pop("CNNRNN_UV_WHEEL", None)
    return subprocess.run([sys.executable, os.path.join(REPO, "mk", "get_uv.py"), str(dest)],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the fake index lists an x86_64 wheel")
def test_get_uv_checks_the_index_sha256(tmp_path, index):
    publish, good = index
    out = _get_uv(tmp_path / "bad", publish("0" * 64))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "sha256" in out.stderr and not (tmp_path / "bad" / "bin" / "uv").exists()
    out = _get_uv(tmp_path / "good", publish(good))
    assert out.returncode == 0, out.stderr
    assert os.access(tmp_path / "good" / "bin" / "uv", os.X_OK)


def _need_python(tmp_path, **fake):
    wheel = fake_wheel(tmp_path / "w.whl")
    with zipfile.ZipFile(wheel) as z:
        uv = tmp_path / "uv"
        uv.write_bytes(z.read(f"uv-{VERSION}.data/scripts/uv"))
    uv.chmod(0o755)
    env = dict(os.environ, FAKE_UV_LOG=str(tmp_path / "uv.log"), **fake)
    return subprocess.run(["sh", os.path.join(REPO, "mk", "need_python.sh"), str(uv), "3.10"],
                          env=env, capture_output=True, text=True, timeout=30)


def test_need_python_finds_installs_or_names_what_to_install(tmp_path):
    assert _need_python(tmp_path, FAKE_UV_FINDS="1").returncode == 0
    installed = _need_python(tmp_path, FAKE_UV_INSTALLS="1")
    assert installed.returncode == 0 and "managed Python 3.10" in installed.stderr
    missing = _need_python(tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "install python3.10" in missing.stderr
    forbidden = _need_python(tmp_path, FAKE_UV_INSTALLS="1", CNNRNN_PYTHON_DOWNLOADS="never")
    assert forbidden.returncode == 1
