"""Shared pytest configuration. Fixtures that start real servers live in tests/fixtures/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from anyio.pytest_plugin import extract_backend_and_options, get_runner


@pytest.fixture
def anyio_backend() -> str:
    # grpc.aio needs asyncio; tests that want trio's virtual clock override this fixture.
    return "asyncio"


@pytest.fixture(scope="module")
def one_event_loop(anyio_backend: Any) -> Iterator[None]:
    """Holds one event loop for all the async tests of a module that uses it (with a
    module-scoped `anyio_backend`), as a module-scoped async fixture would. For modules
    full of grpc.aio: its poller serves every loop it has seen, and a completion that
    arrives for an earlier test's loop after that loop closed raises "Event loop is
    closed" inside a later test."""
    name, options = extract_backend_and_options(anyio_backend)
    with get_runner(name, options):
        yield
