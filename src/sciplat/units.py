"""Sizes and durations as operators write them in platform.yaml ("10GiB", "90d").

Both parse to plain integers (bytes, seconds) so the rest of the code never
handles units; each keeps a clear message that says what a valid value looks like.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_RE = re.compile(r"^\s*(-?\d+)\s*([smhdwy])\s*$")

SIZE_HINT = "write a positive size such as 500MiB, 10GiB or 2TB"
DURATION_HINT = "write a positive duration such as 90s, 30m, 12h, 15d, 4w or 1y"


def parse_size(value: object) -> int:
    """Bytes from 1024, "1KiB", "10 GB", "1.5TiB"; ValueError if negative, zero or unknown unit."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; {SIZE_HINT}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ValueError(f"{value!r} is not a size; {SIZE_HINT}")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {value!r}; {SIZE_HINT}")
    if number <= 0:
        raise ValueError(f"{value!r} must be greater than zero; {SIZE_HINT}")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(value: object) -> int:
    """Seconds from 90, "90s", "15d"; ValueError if not positive."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {DURATION_HINT}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration; {DURATION_HINT}")
    if seconds <= 0:
        raise ValueError(f"{value!r} must be greater than zero; {DURATION_HINT}")
    return seconds


def format_size(num_bytes: int) -> str:
    """The largest binary unit that divides the size exactly (1073741824 -> "1GiB")."""
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit.lower()]
        if num_bytes % factor == 0:
            return f"{num_bytes // factor}{unit}"
    return f"{num_bytes}B"


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
]
Duration = Annotated[int, BeforeValidator(parse_duration)]
