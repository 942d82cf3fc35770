"""Errors a user can fix. The CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (wrong path, empty folder, bad option).

    The message says what is wrong, where, and what to do about it.
    """


class ImageReadError(Exception):
    """One input could not be read; the caller records it per item and goes on."""
