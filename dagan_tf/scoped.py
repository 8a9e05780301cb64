"""Process-wide settings changed for the length of a ``with`` block and given back after it."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def restoring(get: Callable[[], T], put: Callable[[T], object]) -> Iterator[None]:
    """Runs its body, then puts back with ``put`` what ``get()`` gave before it (also when the body raises)."""
    saved = get()
    try:
        yield
    finally:
        put(saved)
