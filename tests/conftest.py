"""Shared pytest configuration. Fixtures that start real servers live in tests/fixtures/."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # grpc.aio needs asyncio; tests that want trio's virtual clock override this fixture.
    return "asyncio"
