"""How long loops report progress: ``(what, done, total)`` callbacks, shared by every layer.

Lower layers (data, methods, protocols, experts) call a ``ProgressFn``; only the command line decides how
it is shown, so nothing below it imports a user interface.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)

__all__ = ["ProgressFn"]
