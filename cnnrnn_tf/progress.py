"""A progress bar on stderr for the long read-only commands (evaluate, report, predict).

tqdm when it is installed and the caller asks for a bar (the CLI does when stderr is a
terminal and ``--quiet`` is not given); otherwise a silent stand-in with the same
``update`` / ``close``. Standard output stays clean for ``--json``.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool, total: Optional[int] = None, unit: str = "image",
                 desc: Optional[str] = None) -> Iterator[object]:
    """``with progress_bar(show, total=n) as bar: ... bar.update(k)``."""
    bar = _Silent()
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:  # the core install has no tqdm: no bar
            pass
        else:
            bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False,
                       dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def wanted(args) -> bool:
    """The CLI's rule: a bar when stderr is a terminal, unless ``--quiet``."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()
