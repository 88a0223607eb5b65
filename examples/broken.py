"""An app whose module raises on import: its function never starts (tests start failures)."""

from __future__ import annotations

from typing import Any

from runtime import Context, function


@function(timeout=1.0)
def broken_import(event: Any, ctx: Context) -> None:  # never reached
    return None


raise RuntimeError("examples/broken.py fails on import on purpose")
