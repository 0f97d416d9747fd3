"""Showing values a peer sent us: in error replies, log lines and on a terminal.

Whatever a client sends may come back in an error message, so it is shown through a bounded
`reprlib.Repr`: nesting past a few levels is elided (a list nested 1,000 deep costs four
levels, not a RecursionError), long containers and strings are cut, and the whole is capped.
`for_terminal` escapes control characters, so a name or a state a guest wrote cannot move the
cursor or recolour an administrator's terminal.
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_SHOWN = 200  # characters of a peer's value quoted back in any message

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 8
_repr.maxdict = 6
_repr.maxstring = 80
_repr.maxlong = 40
_repr.maxother = 60


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """A repr of `value` of at most `limit` characters, whatever its size or depth."""
    try:
        text = _repr.repr(value)
    except Exception:  # an object whose repr fails; nothing a decoder produces, but never crash
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut to at most `limit` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def for_terminal(text: Any) -> str:
    """`text` with every non-printable character escaped (ESC becomes \\x1b), for printing."""
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
