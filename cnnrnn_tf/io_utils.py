"""File access for every part of the project: through ``tf.io.gfile``, so any path may be a URI.

What the writes guarantee:

* :func:`write_bytes_atomic` / :func:`write_json` / :func:`write_text_atomic`: the file is
  written under a temporary name beside its destination and renamed into place. On a local
  disk the rename is atomic; on an object store (``s3://``, ``gs://``) TensorFlow's rename is
  a server-side copy of one object then a delete, and a reader sees either no object or the
  whole one (one object is never visible half-written).
* :func:`publish_dir`: a folder built under a temporary name is published at its final name.
  On a local disk that is one ``rename``, and an earlier folder of that name is swapped out
  only once the new one is complete. Object stores have no folder rename: the objects are
  copied to the final prefix with ``marker`` (e.g. ``saved_model.pb``) copied last, then the
  temporary prefix is deleted. Readers that key on the marker (TF Serving, the project's own
  loaders) never take an unpublished or half-copied prefix.
"""
from __future__ import annotations

import json
import uuid
from typing import Optional

import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError

TMP_INFIX = ".tmp-"


def read_bytes(path: str, what: str = "file", where: str = "", allow_empty: bool = False) -> bytes:
    """Returns the bytes of ``path``; missing, folder, unreadable or empty -> InputError.

    Messages name the file first (``"<path>: CSV file does not exist"``); with
    ``where`` (e.g. ``"data.csv: line 3"``) they start with it and name the file after
    (``"data.csv: line 3: image file x.png does not exist"``).
    """
    head = f"{where}: {what} {path}" if where else f"{path}: {what}"
    uri.ensure_filesystem(path)
    try:
        if tf.io.gfile.isdir(path):
            raise InputError(f"{head} is a folder, not a file")
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError:
        raise InputError(f"{head} does not exist") from None
    except tf.errors.OpError as exc:
        raise InputError(f"{head} cannot be read ({_detail(exc)})") from None
    except OSError as exc:
        raise InputError(f"{head} cannot be read ({exc.strerror or exc})") from None
    if not data and not allow_empty:
        raise InputError(f"{head} is empty")
    return data


def read_text(path: str, what: str = "file") -> str:
    data = read_bytes(path, what, allow_empty=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: {what} is not UTF-8 text") from None


def read_json(path: str, what: str = "JSON file"):
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def _detail(exc) -> str:
    text = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` under a temporary name, then renames it into place."""
    uri.ensure_filesystem(path)
    tmp = f"{path}{TMP_INFIX}{uuid.uuid4().hex[:8]}"
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException as exc:
        remove_quietly(tmp)
        if isinstance(exc, tf.errors.OpError):
            raise uri.storage_error(path, exc, "cannot be written") from None
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False))


def remove_quietly(path: str) -> None:
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except (tf.errors.OpError, OSError):
        pass


def makedirs(path: str, what: str = "folder") -> None:
    """``tf.io.gfile.makedirs`` with a one-line error naming ``path``."""
    uri.ensure_filesystem(path)
    if uri.is_remote(path) and "/" not in str(path).split("://", 1)[1].strip("/"):
        return  # a bucket itself: it exists or the first write says it does not
    try:
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise InputError(f"{path}: exists and is not a folder")
        tf.io.gfile.makedirs(path)
    except tf.errors.OpError as exc:
        raise uri.storage_error(path, exc, f"{what} cannot be created") from None


def is_empty_dir(path: str) -> bool:
    return tf.io.gfile.isdir(path) and not tf.io.gfile.listdir(path)


def copy_tree(src: str, dst: str, marker: Optional[str] = None) -> None:
    """Copies the files under ``src`` to ``dst``; the file named ``marker`` (relative) last."""
    files = []
    for root, _, names in tf.io.gfile.walk(src):
        rel_root = root[len(src):].strip("/")
        for name in names:
            files.append(f"{rel_root}/{name}" if rel_root else name)
    files.sort(key=lambda rel: (rel == marker, rel))
    for rel in files:
        target = uri.join(dst, rel) if uri.is_remote(dst) else uri.join(dst, *rel.split("/"))
        tf.io.gfile.makedirs(uri.dirname(target))
        tf.io.gfile.copy(uri.join(src, rel) if uri.is_remote(src) else uri.join(src, *rel.split("/")),
                         target, overwrite=True)


def publish_dir(tmp: str, final: str, marker: Optional[str] = None) -> None:
    """Publishes the complete folder ``tmp`` as ``final`` (see the module docstring).

    An existing ``final`` is replaced; ``tmp`` is gone afterwards.
    """
    if not uri.is_remote(final):
        import os
        import shutil

        old = None
        if os.path.exists(final):
            old = f"{tmp}-old"
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old:  # put the previous folder back
                os.rename(old, final)
            raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    if tf.io.gfile.exists(final):
        # Unpublish the old folder first: its marker goes, so no reader takes a mix.
        if marker:
            remove_quietly(uri.join(final, marker))
        remove_quietly(final)
    copy_tree(tmp, final, marker=marker)
    remove_quietly(tmp)
