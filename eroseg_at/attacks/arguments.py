"""Reading and checking attack arguments: one place for parsing, types and bounds, one wording of errors.

Hydra's override grammar does no arithmetic, so ``attack.eps=8/255`` arrives as a string; numbers are
parsed here without ``eval``. Every check names the parameter and the value it got.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_FRACTION = re.compile(r"^\s*([^/\s]+)\s*(?:/\s*([^/\s]+)\s*)?$")


def parse_number(value: float | int | str, name: str) -> float:
    """Reads a finite float given as a number or as a string such as ``"8/255"`` or ``"0.03"``.

    Raises:
        ValueError: If the value is not a finite number or a fraction of two numbers.
    """
    expected = f"{name} must be a number or a fraction string such as '8/255'"
    if isinstance(value, bool):
        raise ValueError(f"{expected}, got the bool {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _FRACTION.match(value)
        try:
            if match is None:
                raise ValueError
            numerator = float(match.group(1))
            denominator = float(match.group(2)) if match.group(2) is not None else 1.0
            number = numerator / denominator
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{expected}, got {value!r}") from None
    else:
        raise ValueError(f"{expected}, got {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def number(
    value: float | int | str,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """:func:`parse_number`, then checks ``minimum <= value <= maximum`` (``>`` with ``exclusive_minimum``).

    Raises:
        ValueError: ``"<name> must lie in [a, b], got v"`` (``(a, b]`` when exclusive), or with one bound
            ``"<name> must be >= a, got v"`` / ``"> a"`` / ``"<= b"``.
    """
    parsed = parse_number(value, name)
    below = minimum is not None and (parsed <= minimum if exclusive_minimum else parsed < minimum)
    above = maximum is not None and parsed > maximum
    if below or above:
        if minimum is not None and maximum is not None:
            bracket = "(" if exclusive_minimum else "["
            raise ValueError(f"{name} must lie in {bracket}{minimum:g}, {maximum:g}], got {value!r}")
        if minimum is not None:
            raise ValueError(
                f"{name} must be {'>' if exclusive_minimum else '>='} {minimum:g}, got {value!r}"
            )
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return parsed


def number_sequence(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> tuple[float, ...]:
    """A non-empty sequence (not a string) of :func:`number` values, each checked as ``name[i]``.

    Raises:
        ValueError: ``"<name> must be a non-empty sequence of numbers, got v"``, or an element's own error.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {value!r}")
    return tuple(
        number(item, f"{name}[{index}]", minimum, maximum, exclusive_minimum)
        for index, item in enumerate(value)
    )


def integer(value: Any, name: str, minimum: int) -> int:
    """Returns ``value`` if it is an integer (not a bool) >= ``minimum``, else raises a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def optional_integer(value: Any, name: str, minimum: int) -> int | None:
    """None, or :func:`integer`."""
    return None if value is None else integer(value, name, minimum)


def boolean(value: Any, name: str) -> bool:
    """Returns ``value`` if it is a bool (not 0/1 or a string), else raises a ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def choice(value: Any, name: str, options: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``options``, else raises a ValueError listing them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {options!r}, got {value!r}")
    return value
