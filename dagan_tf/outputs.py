"""Atomic output folders: a command's results appear whole or not at all."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from dagan_tf.errors import DaganError


def check_new_output(out: str | Path, overwrite: bool) -> Path:
    """Raise when ``out`` exists and ``overwrite`` is False; returns ``out`` as a Path."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DaganError(f"output {out} exists; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``out``; on success it replaces ``out``.

    On any exception the temporary folder is removed and ``out`` is untouched.
    """
    out = check_new_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
