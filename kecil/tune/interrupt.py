"""Ctrl-C during `kecil tune`: finish the step under way, save a checkpoint, and say how to go on.

Without this, a run interrupted between two --save-every checkpoints lost every step since the
last one (a newcomer lost 17 minutes at step 34 of 160, with the first checkpoint due at 50)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stop_after_step() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C (SIGINT); the loop checks it between optimizer steps, so the
    weights and the optimizer are never saved half-updated. A second Ctrl-C stops at once, as usual.
    Outside the main thread (where no handler can be installed) the event is never set."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def first(signum, frame) -> None:
        asked.set()
        sys.stderr.write("\nkecil: stopping after this step to save a checkpoint (Ctrl-C again stops now, "
                         "losing the steps since the last checkpoint)\n")
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)
