"""Writing run artifacts so that a crash never leaves a half-written file that looks complete."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private (0600); give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write dict rows (same keys) as CSV with a header, atomically."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return write_text(path, buf.getvalue())


def new_run_dir(project: str | Path, name: str) -> Path:
    """Create and return ``project/name``, or ``name2``, ``name3``... if taken: runs never overwrite runs."""
    from rtdetr_prune.errors import UserError

    base = Path(project)
    for i in range(1, 10_000):
        d = base / (name if i == 1 else f"{name}{i}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"Cannot create the run directory '{d}' ({e.strerror}). "
                            "Choose a writable --project directory.") from e
    raise RuntimeError(f"no free run directory under {base}")
