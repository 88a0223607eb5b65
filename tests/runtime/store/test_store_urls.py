"""Store URLs: malformed ones fail at open naming the problem; unreachable servers give
`StoreUnavailable` naming the URL without its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import (
    InvalidStoreURL,
    StoreUnavailable,
    open_store,
    parse_store_url,
)
from runtime._store import redact
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("url, backend", [
    ("memory://", "memory"),
    ("sqlite:///var/lib/stoic/store.db", "sqlite"),
    ("redis://127.0.0.1:6379/0", "redis"),
    ("redis://:pw@cache:6379", "redis"),
    ("rediss://cache.example:6380/2", "redis"),
    ("postgresql://stoic:pw@db:5432/stoic", "postgresql"),
    ("postgres://db/stoic", "postgresql"),
])
def test_valid_urls(url: str, backend: str) -> None:
    assert parse_store_url(url).backend == backend


def test_sqlite_path() -> None:
    assert parse_store_url("sqlite:////tmp/x.db").path == "//tmp/x.db"
    assert parse_store_url("sqlite:///tmp/x.db").path == "/tmp/x.db"


@pytest.mark.parametrize("url, reason", [
    ("", "empty"),
    ("store.db", "no scheme"),
    ("mysql://db/x", "unknown scheme"),
    ("sqlite://relative.db", "absolute file path"),
    ("sqlite:///", "absolute file path"),
    ("sqlite:///tmp/dir/", "absolute file path"),
    ("redis://", "needs a host"),
    ("redis://host:notaport/0", "Port"),
    ("redis://host:6379/zero", "must be a number"),
    ("postgresql:///db", "needs a host"),
    ("memory://somewhere", "no host or path"),
])
async def test_malformed_urls_fail_at_open(url: str, reason: str) -> None:
    with pytest.raises(InvalidStoreURL) as info:
        parse_store_url(url)
    assert reason.lower() in str(info.value).lower()
    with pytest.raises(InvalidStoreURL):
        async with open_store(url):
            pass


def test_redaction() -> None:
    assert redact("postgresql://u:s3cret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("redis://:s3cret@h:5/0") == "redis://:***@h:5/0"
    assert redact("redis://h:5/0") == "redis://h:5/0"
    with pytest.raises(InvalidStoreURL) as info:
        parse_store_url("mysql://u:s3cret@h/db")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
async def test_unreachable_server_names_url_without_secret(scheme: str) -> None:
    port = free_port()  # nothing listens there
    url = f"{scheme}://user:s3cret@127.0.0.1:{port}/0"
    with pytest.raises(StoreUnavailable) as info:
        async with open_store(url):
            pass
    assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)
    assert info.value.url == f"{scheme}://user:***@127.0.0.1:{port}/0"
    assert info.value.__cause__ is not None


async def test_unopenable_sqlite_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailable) as info:
        async with open_store(f"sqlite:///{blocker}/store.db"):
            pass
    assert str(blocker) in str(info.value)


async def test_server_going_away_is_store_unavailable() -> None:
    from bench._servers import ServerMissing, redis_server

    server = redis_server()
    try:
        url = server.__enter__()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    running = True
    try:
        async with open_store(url) as store:
            await store.put("k", b"v")
            server.__exit__(None, None, None)
            running = False
            with pytest.raises(StoreUnavailable) as info:
                await store.get("k")
            assert url in str(info.value)
    finally:
        if running:
            server.__exit__(None, None, None)
