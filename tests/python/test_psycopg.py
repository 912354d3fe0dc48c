"""psycopg 3: extended protocol with typed parameters, transactions, errors."""
import datetime as dt
from decimal import Decimal

import psycopg
import pytest


def test_round_trip_types_and_parameters(server):
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id bigint NOT NULL, name text, amount numeric(18,2), ok boolean, "
            "d date, ts timestamp, tz timestamptz, f double precision, i int)"
        )
        tz = dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
        ts = dt.datetime(2026, 3, 4, 5, 6, 7, 123456)
        conn.execute(
            "INSERT INTO t VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (1, "héllo", Decimal("12.34"), True, dt.date(2026, 1, 2), ts, tz, 2.5, 7),
        )
        conn.execute("INSERT INTO t (id) VALUES (%s)", (2,))
        rows = conn.execute("SELECT * FROM t ORDER BY id").fetchall()
        assert rows[0] == (1, "héllo", Decimal("12.34"), True, dt.date(2026, 1, 2), ts, tz, 2.5, 7)
        assert rows[1] == (2, None, None, None, None, None, None, None, None)
        # Binary results.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, amount, tz FROM t WHERE id = %s", (1,))
            assert cur.fetchone() == (1, Decimal("12.34"), tz)
        assert conn.execute("SELECT count(*) FROM t WHERE name = %s", ("héllo",)).fetchone() == (1,)


def test_transactions_and_savepoints(server):
    with psycopg.connect(server.url) as conn:
        conn.execute("CREATE TABLE t (a int)")
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1)")
            with conn.transaction():  # SAVEPOINT / RELEASE
                conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_errors_carry_sqlstate_and_connection_survives(server):
    with psycopg.connect(server.url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nope")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_time_zone_setting(server):
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Asia/Shanghai'")
        v = conn.execute("SELECT CAST('2026-01-01T00:00:00Z' AS timestamptz)").fetchone()[0]
        assert v.utcoffset() == dt.timedelta(hours=8)
        assert v.astimezone(dt.timezone.utc) == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
