"""Progress of long work: a ``tqdm`` bar on a terminal, one plain line per stage otherwise.

Redirected output (logs, CI) gets no control codes: when standard error is
not a terminal, :func:`progress` prints a single line when the stage ends
(``eval zero_filled: 605 slices in 12.3 s (49.2 slices/s)``).  With
``enabled=False`` nothing is printed (library use, tests).
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
ENABLED = {"on": False}


def enable(on: bool = True) -> None:
    """Turn progress output on (the CLI does) or off (the library default)."""
    ENABLED["on"] = on


class Stage:
    """Counts ``total`` units of one stage; ``update(n)`` after each chunk, ``close()`` at the end."""

    def __init__(self, desc: str, total: int | None, unit: str):
        self.desc, self.total, self.unit = desc, total, unit
        self.count, self.start = 0, time.monotonic()
        self.active = ENABLED["on"]
        self.bar = None
        if self.active and sys.stderr.isatty():
            from tqdm import tqdm

            size = shutil.get_terminal_size((100, 24))  # a terminal of unknown size reports 0 × 0
            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", ncols=min(size.columns, 120),
                            nrows=max(size.lines, 2), leave=True)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.active:
            seconds = time.monotonic() - self.start
            rate = f" ({self.count / seconds:.1f} {self.unit}/s)" if seconds > 0 else ""
            print(f"{self.desc}: {self.count} {self.unit} in {seconds:.1f} s{rate}", file=sys.stderr, flush=True)
        self.active = False

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Yield ``items`` while showing progress of one unit per item."""
    with Stage(desc, total, unit) as stage:
        for item in items:
            yield item
            stage.update(1)
