"""SIGTERM as an exception: the cleanup that Ctrl-C gets (`finally`, context managers, locks
released, temporary outputs removed) then runs for a batch scheduler's time limit or `kill` too.

The trainer handles SIGINT/SIGTERM itself while it steps (it finishes the step and saves a
checkpoint); outside its loop, these make the signal stop the command at once, but cleanly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(SystemExit):
    """SIGTERM stopped the command after its cleanup.

    A SystemExit with status 128 + the signal number, so that when nobody catches it the process
    ends as the signal's default action would have ended it, without a traceback.
    """

    def __init__(self, signum: int, done: str = "stopped") -> None:
        super().__init__(128 + signum)
        self.signum, self.done = signum, done

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name} received: {self.done}"


@contextmanager
def sigterm_raises(done: str = "stopped") -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated(signum, done).

    Replaces only the default action, or the handler of an enclosing `sigterm_raises` (so the
    innermost says what was cleaned up): a handler the caller installed, or SIG_IGN, is
    respected. Handlers can only be installed from the main thread. Only the first signal
    raises, so that a second one cannot abort the cleanup the first one started.
    """
    previous = signal.getsignal(signal.SIGTERM)
    ours = previous is signal.SIG_DFL or getattr(previous, "raises_terminated", False)
    if threading.current_thread() is not threading.main_thread() or not ours:
        yield
        return
    raised = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated(signum, done)

    handle.raises_terminated = True  # type: ignore[attr-defined]  # marks it as ours
    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
