"""The C part of `otlp_wire.Encoder.add` (`_otlp_fast.c`; optional: built where a C
compiler is)."""

from collections.abc import Sequence
from typing import Any

def add(items: Sequence[Any], groups: dict[Any, list[bytes]], /) -> tuple[int, list[Any]]:
    """Encode the span, route and worker items it can into `groups` ((resource, scope) ->
    list of bytes); (spans added, the items left for the Python encoder)."""
