"""Domain names and domain references: which text is a domid and which is a name.

xl takes a domain by domid or by name, and so does every ballonet command and operation. For
that to be unambiguous, a domid written as text is ASCII digits only ("٣" or "²" is not 3), and
no name may be all numeric in any script: a name that a person (or `int()`) could read as a
number is refused when the domain is created, so it can never be mistaken for a domid later.
"""

from __future__ import annotations

import re

_ASCII_DOMID = re.compile(r"[0-9]{1,9}")  # MAX_DOMID has 5 digits; 9 keeps int() cheap and exact


def domid_text(text: str) -> int | None:
    """The domid `text` spells in ASCII digits, or None when it is not one."""
    return int(text) if _ASCII_DOMID.fullmatch(text) else None


def numeric_name(name: str) -> bool:
    """Whether `name` could be read as a number: all digits or numerals of any script, or
    anything `int()` accepts (a sign, surrounding spaces, underscores between digits)."""
    if name.isnumeric():
        return True
    try:
        int(name)
    except ValueError:
        return False
    return True


def domain_ref_text(text: str) -> int | str:
    """A command-line DOMAIN argument: a domid when it is ASCII digits, else a name."""
    domid = domid_text(text)
    return text if domid is None else domid
