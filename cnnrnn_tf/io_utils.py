"""Reading user files at input boundaries, with one-line errors that name them."""
from __future__ import annotations

from cnnrnn_tf.errors import InputError


def read_bytes(path: str, what: str = "file", where: str = "", allow_empty: bool = False) -> bytes:
    """Returns the bytes of ``path``; missing, folder, unreadable or empty -> InputError.

    Messages name the file first (``"<path>: CSV file does not exist"``); with
    ``where`` (e.g. ``"data.csv: line 3"``) they start with it and name the file after
    (``"data.csv: line 3: image file x.png does not exist"``).
    """
    head = f"{where}: {what} {path}" if where else f"{path}: {what}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{head} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{head} is a folder, not a file") from None
    except OSError as exc:
        raise InputError(f"{head} cannot be read ({exc.strerror or exc})") from None
    if not data and not allow_empty:
        raise InputError(f"{head} is empty")
    return data
