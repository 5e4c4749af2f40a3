"""argparse value types that check ranges: a bad value is one line naming the flag
(argparse adds ``argument --flag:``) and the allowed range, exit status 2."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

_WHOLE = re.compile(r"[+-]?[0-9]+")  # ASCII digits only (int() takes any script's)


def number(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    span = f"{'(' if low_open else '['}{_show(low)}, {_show(high)}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number (allowed: {span})"
            ) from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text}")
        return value

    return parse


def whole(low: int, high: int) -> Callable[[str], int]:
    """A whole number (ASCII digits, optional sign) in ``low..high``."""

    def parse(text: str) -> int:
        if _WHOLE.fullmatch(text.strip()) is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number (allowed: {low}..{high})"
            )
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number in {low}..{high}, got {value}"
            )
        return value

    return parse


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
