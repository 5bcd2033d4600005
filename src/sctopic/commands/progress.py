"""What the long-running commands say while they work, and the line they end with.

Everything goes to stderr, so stdout stays what each command documents (tables, JSON). Progress
lines ("sctopic report: topic cards (12 s)") are silenced by the global ``-q/--quiet``; the
closing line ("outputs in ...; next: ...") is printed either way, since it is the result.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """Stage messages of one command run.

    Parameters
    ----------
    command
        The sub-command's name (``"report"``).
    quiet
        Print no stage messages (``args.quiet``).
    """

    def __init__(self, command: str, quiet: bool = False):
        self.command = command
        self.quiet = bool(quiet)
        self.t0 = time.perf_counter()

    @property
    def enabled(self) -> bool:
        """Whether progress (messages and bars) is shown."""
        return not self.quiet

    def __call__(self, message: str) -> None:
        """Say which stage starts, with the seconds elapsed since the command started."""
        if not self.quiet:
            print(f"sctopic {self.command}: {message} ({time.perf_counter() - self.t0:.0f} s)",
                  file=sys.stderr, flush=True)

    def done(self, outputs: str, next_step: str | None = None) -> None:
        """The closing line: where the outputs are and what to run next."""
        line = f"sctopic {self.command}: done in {time.perf_counter() - self.t0:.0f} s; outputs in {outputs}"
        if next_step:
            line += f"; next: {next_step}"
        print(line, file=sys.stderr, flush=True)


def for_args(command: str, args) -> Progress:
    """A :class:`Progress` honouring the global ``--quiet`` flag of ``args``."""
    return Progress(command, getattr(args, "quiet", False))
