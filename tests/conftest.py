"""Shared test helpers for every tier."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCIPLAT = str(Path(sys.executable).parent / "sciplat")
