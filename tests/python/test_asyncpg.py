"""asyncpg: prepared statements, binary protocol, type introspection."""
import asyncio
import datetime as dt
from decimal import Decimal

import asyncpg


def test_prepared_statements_and_binary(server):
    async def run():
        conn = await asyncpg.connect(host=server.host, port=server.port, user="touchlake", database="touchlake")
        try:
            await conn.execute("CREATE TABLE t (id bigint, name text, amount numeric(18,2), d date, tz timestamptz)")
            tz = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
            await conn.execute("INSERT INTO t VALUES ($1, $2, $3, $4, $5)", 1, "a", Decimal("1.50"), dt.date(2026, 1, 2), tz)
            await conn.executemany("INSERT INTO t (id, name) VALUES ($1, $2)", [(2, "b"), (3, "c")])
            stmt = await conn.prepare("SELECT id, name, amount, d, tz FROM t WHERE id >= $1 ORDER BY id")
            rows = await stmt.fetch(1)
            assert [r["id"] for r in rows] == [1, 2, 3]
            assert rows[0]["amount"] == Decimal("1.50")
            assert rows[0]["d"] == dt.date(2026, 1, 2)
            assert rows[0]["tz"] == tz
            assert [a.name for a in stmt.get_attributes()] == ["id", "name", "amount", "d", "tz"]
            assert await conn.fetchval("SELECT count(*) FROM t WHERE name = $1", "b") == 1
        finally:
            await conn.close()

    asyncio.run(run())
