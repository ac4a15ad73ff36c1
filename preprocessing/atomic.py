"""Atomic writes: every output is written under a temporary name in its folder, then renamed.

An interrupted run therefore leaves either the complete previous file or none, never half of
one; leftovers carry the ``TMP_MARK`` prefix and are removed by the next run.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


@contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_MARK, suffix=suffix or "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(data, path: Path) -> None:
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def atomic_write_csv(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files an interrupted run left under ``root``; returns how many."""
    stale = [p for p in Path(root).rglob(TMP_MARK + "*") if p.is_file()]
    for p in stale:
        p.unlink()
    return len(stale)
