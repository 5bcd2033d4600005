"""Exceptions that carry a message meant for the user (the CLI prints them as one line)."""


class SctopicError(Exception):
    """Base class: a problem with the user's input or settings, with the fix in the message."""


class InputError(SctopicError, ValueError):
    """The data passed in cannot be used as it is (wrong values, shapes or names)."""


class OutputError(SctopicError, OSError):
    """A result could not be written (disk full, read-only or missing destination, I/O error).

    The message names the path, the cause and, for a full disk, the space left; nothing is
    left half-written under the final name. Also an :class:`OSError`, so code that catches
    I/O errors keeps catching it (``errno`` is the system's error number where known).
    """
