"""Store tests get real servers from tests/fixtures/servers.py (session-scoped)."""

from tests.fixtures.servers import postgres_url, redis_url  # noqa: F401 - fixtures
