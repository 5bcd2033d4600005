"""Exceptions that carry a message meant for the user (the CLI prints them as one line)."""


class SctopicError(Exception):
    """Base class: a problem with the user's input or settings, with the fix in the message."""


class InputError(SctopicError, ValueError):
    """The data passed in cannot be used as it is (wrong values, shapes or names)."""
