"""Command-line argument types shared by the ballonet CLIs: numbers in ASCII digits only.

`str.isdigit()` is true for "²" and "٣"; `int()` then fails on the first (a traceback where a
usage error belongs) and silently reads the second as 3. Each type here is an argparse `type=`
that accepts ASCII digits only and raises ArgumentTypeError saying what it wanted, so a bad
argument is a usage error (exit status 2), never a traceback and never another script's digits
read as a number.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from wire.names import domain_ref_text, numeric_name
from wire.operations import MAX_DOMID
from wire.shown import shown

_DIGITS = re.compile(r"[0-9]{1,30}")  # longer is out of any range here, and int() stays cheap
_DECIMAL = re.compile(r"(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,3})?")


def domain(text: str) -> int | str:
    """A DOMAIN (or GUEST) argument: a domid in ASCII digits, else a name, as xl takes either."""
    ref = domain_ref_text(text)
    if isinstance(ref, int):
        if ref > MAX_DOMID:
            raise argparse.ArgumentTypeError(f"domid {ref} is out of range 0..{MAX_DOMID}")
        return ref
    if numeric_name(text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is neither a domid (ASCII digits 0-9) nor a name (a name is never a number)"
        )
    return text


def whole_number(lo: int, hi: int, what: str = "a whole number") -> Callable[[str], int]:
    """An integer lo..hi written in ASCII digits."""

    def parse(text: str) -> int:
        if _DIGITS.fullmatch(text) is None or not lo <= int(text) <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} {lo}..{hi} in ASCII digits, got {shown(text)}")
        return int(text)

    return parse


def positive_number(what: str = "a positive number", limit: float = math.inf) -> Callable[[str], float]:
    """A positive, finite number (ASCII: 2, 0.5, .25, 1e-3), at most `limit`."""
    bound = "" if limit == math.inf else f" up to {limit:g}"

    def parse(text: str) -> float:
        value = float(text) if _DECIMAL.fullmatch(text) else math.nan
        if not 0 < value <= limit or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}{bound}, got {shown(text)}")
        return value

    return parse


seconds = positive_number("a positive number of seconds")
