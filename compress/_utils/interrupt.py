"""Ctrl-C that is never lost: the request is remembered, so a swallowed ``KeyboardInterrupt`` is raised again.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives. If that
is inside a finalizer (``__del__``, a weakref or garbage-collector callback) or a library's catch-all
handler, the exception is printed as "Exception ignored" or dropped, and the run goes on as if nothing
happened. ``handling_interrupts()`` installs a SIGINT handler that also records the request, and
``check_interrupt()``, called between training steps and between stages, raises it again. A user's
Ctrl-C therefore always stops the run at the next step at the latest (exit 130, finished stages kept).

Example:
    >>> with handling_interrupts():
    ...     check_interrupt()  # nothing requested: returns
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_REQUESTED = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _REQUESTED.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling_interrupts() -> Iterator[None]:
    """Remember SIGINT for the duration (main thread only; elsewhere a no-op); then restore the handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _REQUESTED.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _REQUESTED.clear()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since ``handling_interrupts`` began."""
    if _REQUESTED.is_set():
        raise KeyboardInterrupt
