"""Errors the user can fix. The CLI prints their message (no traceback) and exits with code 2."""


class MMDDError(Exception):
    """Base class: a usage or input problem whose message says what was expected and how to fix it."""


class DataError(MMDDError):
    """A dataset file or folder is missing, malformed or inconsistent."""


class UsageError(MMDDError):
    """A command-line argument, parameter or name is invalid."""


class WeightsError(MMDDError):
    """Pretrained weights were asked for but are not available locally."""
