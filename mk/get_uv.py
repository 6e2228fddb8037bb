"""Puts a pinned `uv` under the repository, without pip, venv or the system Python's site.

`make` calls this when no `uv` is on PATH. It runs on any Python 3.8+ with only the standard
library, so it works where the distribution's `python3` is externally managed (PEP 668) and
has neither pip nor the venv module. It fetches uv's wheel for this platform from the package
index (the one pip is told to use: PIP_INDEX_URL, else PyPI), checks its sha256 against the
index's, and unpacks the `uv` binary to DEST/bin/uv. Nothing is written outside DEST.

    python3 mk/get_uv.py DEST          # DEST/bin/uv
    CNNRNN_UV_WHEEL=FILE python3 mk/get_uv.py DEST   # from a wheel already on disk (offline)

Errors: one line on stderr naming what to do, exit status 1.
"""
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile

UV_VERSION = os.environ.get("CNNRNN_UV_VERSION", "0.13.9")
DEFAULT_INDEX = "https://pypi.org/simple"
# Wheel platform tags that run here, best first, per machine (uv's wheels are py3-none-*).
PLATFORM_TAGS = {
    "x86_64": ("manylinux_2_17_x86_64", "musllinux_1_1_x86_64"),
    "aarch64": ("manylinux_2_17_aarch64", "manylinux_2_28_aarch64", "musllinux_1_1_aarch64"),
}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def index_url() -> str:
    return (os.environ.get("CNNRNN_UV_INDEX") or os.environ.get("PIP_INDEX_URL")
            or os.environ.get("UV_DEFAULT_INDEX") or DEFAULT_INDEX).rstrip("/")


def wheel_tags(filename: str):
    """The platform tags of a wheel file name (`uv-0.13.9-py3-none-TAG.TAG.whl`)."""
    return set(filename[:-len(".whl")].split("-")[-1].split("."))


def choose_file(files, version: str, machine: str):
    """The index entry of uv's wheel for this machine, or None."""
    wanted = PLATFORM_TAGS.get(machine, ())
    wheels = [f for f in files
              if f.get("filename", "").startswith(f"uv-{version}-") and f["filename"].endswith(".whl")]
    for tag in wanted:
        for f in wheels:
            if tag in wheel_tags(f["filename"]):
                return f
    return None


def fetch(url: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept,
                                                   "User-Agent": "cnnrnn-tf-bootstrap"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"cannot fetch {url} ({reason}); install uv yourself (https://docs.astral.sh/uv/) "
             f"or set CNNRNN_UV_WHEEL to a downloaded uv-{UV_VERSION} wheel")
    return b""


def download_wheel(machine: str) -> bytes:
    base = index_url()
    page = fetch(f"{base}/uv/", accept="application/vnd.pypi.simple.v1+json")
    try:
        files = json.loads(page.decode("utf-8"))["files"]
    except (ValueError, KeyError, UnicodeDecodeError):
        fail(f"{base}/uv/: the index did not answer with its JSON API (PEP 691); install uv "
             f"yourself or set CNNRNN_UV_WHEEL to a downloaded uv-{UV_VERSION} wheel")
    entry = choose_file(files, UV_VERSION, machine)
    if entry is None:
        fail(f"{base}/uv/ has no uv {UV_VERSION} wheel for {machine} Linux; install uv yourself "
             f"(https://docs.astral.sh/uv/)")
    url = entry["url"]
    if not url.startswith(("http://", "https://", "file:")):
        url = urllib.parse.urljoin(f"{base}/uv/", url)
    data = fetch(url)
    expected = (entry.get("hashes") or {}).get("sha256")
    if not expected:
        fail(f"{base}/uv/: no sha256 for {entry['filename']}; refusing an unchecked binary")
    if hashlib.sha256(data).hexdigest() != expected:
        fail(f"{entry['filename']}: sha256 does not match the index's; not installed")
    return data


def unpack(wheel: bytes, dest: str, origin: str) -> str:
    try:
        archive = zipfile.ZipFile(io.BytesIO(wheel))
    except zipfile.BadZipFile:
        fail(f"{origin}: not a wheel (zip) file")
    names = [n for n in archive.namelist()
             if n.endswith(("/scripts/uv", "/scripts/uvx")) and ".data/" in n]
    if not any(n.endswith("/uv") for n in names):
        fail(f"{origin}: holds no uv binary (.data/scripts/uv)")
    bin_dir = os.path.join(dest, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for name in names:
        target = os.path.join(bin_dir, os.path.basename(name))
        fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(archive.read(name))
        os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, target)  # a half-written binary is never left under its own name
    return os.path.join(bin_dir, "uv")


def main(argv) -> int:
    if len(argv) != 2:
        fail("usage: python3 mk/get_uv.py DEST")
    dest = argv[1]
    if not sys.platform.startswith("linux"):
        fail(f"no bootstrap for {sys.platform}: install uv yourself (https://docs.astral.sh/uv/)")
    local = os.environ.get("CNNRNN_UV_WHEEL")
    if local:
        try:
            with open(local, "rb") as f:
                wheel, origin = f.read(), local
        except OSError as exc:
            fail(f"CNNRNN_UV_WHEEL={local}: {exc.strerror or exc}")
    else:
        machine = platform.machine().lower()
        print(f"uv is not on PATH: fetching uv {UV_VERSION} for {machine} into {dest}/bin",
              file=sys.stderr)
        wheel, origin = download_wheel(machine), f"uv {UV_VERSION} wheel"
    print(unpack(wheel, dest, origin))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
