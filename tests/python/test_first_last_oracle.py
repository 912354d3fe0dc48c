"""first_value / last_value with ORDER BY under GROUP BY (Touchlake's grouped accumulator)
against DuckDB on generated rows with many ties, NULL keys and values, both directions and
NULLS FIRST/LAST, IGNORE NULLS, FILTER, and thousands of groups over many batches.

Between rows with equal keys SQL leaves the pick open, so DuckDB's oracle is the set of
values of each group's rank-1 rows (`rank() OVER (PARTITION BY g ORDER BY …)`); ours must be
one of them, and NULL for a group none of whose rows qualify."""
import datetime as dt
import random

import duckdb
import psycopg

ROWS = 40_000
GROUPS = 3_000

# (our aggregate call, DuckDB ORDER BY, DuckDB row condition, value column)
CASES = [
    ("first_value(v ORDER BY t, s)", "t ASC NULLS LAST, s ASC NULLS LAST", "true", "v"),
    ("last_value(v ORDER BY t, s)", "t DESC NULLS FIRST, s DESC NULLS FIRST", "true", "v"),
    ("first_value(v ORDER BY t DESC NULLS LAST, s NULLS FIRST)",
     "t DESC NULLS LAST, s ASC NULLS FIRST", "true", "v"),
    ("last_value(v ORDER BY t DESC NULLS LAST, s NULLS FIRST)",
     "t ASC NULLS FIRST, s DESC NULLS LAST", "true", "v"),
    ("first_value(n ORDER BY s)", "s ASC NULLS LAST", "true", "n"),
    ("first_value(n ORDER BY s DESC)", "s DESC NULLS FIRST", "true", "n"),
    ("last_value(v ORDER BY d NULLS FIRST, n DESC)", "d DESC NULLS LAST, n ASC NULLS FIRST", "true", "v"),
    ("first_value(v ORDER BY t)", "t ASC NULLS LAST", "true", "v"),
    ("first_value(v ORDER BY t, s) FILTER (WHERE n % 3 = 0)",
     "t ASC NULLS LAST, s ASC NULLS LAST", "n % 3 = 0", "v"),
    ("first_value(v ORDER BY t, s) IGNORE NULLS", "t ASC NULLS LAST, s ASC NULLS LAST",
     "v IS NOT NULL", "v"),
    ("last_value(t ORDER BY n DESC, s)", "n ASC NULLS FIRST, s DESC NULLS FIRST", "true", "t"),
    ("first_value(n ORDER BY x)", "x ASC NULLS LAST", "true", "n"),
]


def generate():
    rng = random.Random(11)
    base = dt.datetime(2026, 1, 1)
    rows = []
    for i in range(ROWS):
        g = rng.randrange(GROUPS)
        # Few distinct times per group: many ties on the first key.
        t = None if rng.random() < 0.05 else base + dt.timedelta(minutes=rng.randrange(12))
        s = None if rng.random() < 0.1 else rng.choice(["a", "b", "c", "d", "web", "app", "a longer text than twelve"])
        v = None if rng.random() < 0.15 else f"v{i}"
        d = None if rng.random() < 0.1 else (base + dt.timedelta(days=rng.randrange(5))).date()
        x = rng.choice([None, 1.5, -2.0, 0.25, 3.0])
        rows.append((g, t, s, v, i % 97, d, x))
    return rows


def test_first_last_value_match_duckdb(server):
    rows = generate()
    duck = duckdb.connect()
    duck.execute("CREATE TABLE fl (g BIGINT, t TIMESTAMP, s VARCHAR, v VARCHAR, n BIGINT, d DATE, x DOUBLE)")
    duck.executemany("INSERT INTO fl VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    compared = ties = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE public.fl (g bigint, t timestamp, s text, v text, n bigint, d date, x double precision)")
            with cur.copy("COPY public.fl (g, t, s, v, n, d, x) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            # Small batches: every group is met in many batches.
            cur.execute("SET datafusion.execution.batch_size = 512")
            for call, order, cond, col in CASES:
                cur.execute(f"SELECT g, {call} FROM public.fl GROUP BY g")
                ours = dict(cur.fetchall())
                want = {}
                for g, values in duck.execute(
                    f"SELECT g, list({col}) FROM (SELECT g, {col}, rank() OVER (PARTITION BY g ORDER BY {order}) AS r "
                    f"FROM fl WHERE {cond}) WHERE r = 1 GROUP BY g"
                ).fetchall():
                    want[g] = values
                    ties += len(values) > 1
                assert set(ours) == {r[0] for r in rows}, call
                for g, got in ours.items():
                    if isinstance(got, dt.datetime):
                        got = got.replace(tzinfo=None)
                    assert got in want.get(g, [None]), (call, g, got, want.get(g))
                    compared += 1
            # The same answers through two aggregation phases (partial states merged).
            cur.execute("SET datafusion.execution.target_partitions = 4")
            cur.execute("SELECT g % 7, first_value(v ORDER BY t, s), last_value(n ORDER BY s, t) FROM "
                        "(SELECT * FROM public.fl UNION ALL SELECT * FROM public.fl) u GROUP BY 1 ORDER BY 1")
            merged = cur.fetchall()
    for k, first, last in merged:
        f = duck.execute("SELECT list(v) FROM (SELECT v, rank() OVER (ORDER BY t ASC NULLS LAST, s ASC NULLS LAST) r "
                         "FROM fl WHERE g % 7 = ?) WHERE r = 1", [k]).fetchone()[0]
        l = duck.execute("SELECT list(n) FROM (SELECT n, rank() OVER (ORDER BY s DESC NULLS FIRST, t DESC NULLS FIRST) r "
                         "FROM fl WHERE g % 7 = ?) WHERE r = 1", [k]).fetchone()[0]
        assert first in f and last in l, (k, first, last)
        compared += 2
    assert ties > 0
    print(f"first_value/last_value: {compared} group values compared with DuckDB ({ties} groups with tied keys)")


def test_first_value_without_group_by_and_over_empty_input(server):
    with psycopg.connect(server.url, autocommit=True) as conn:
        row = conn.execute("SELECT first_value(v ORDER BY t DESC), last_value(v ORDER BY t DESC) FROM "
                           "(VALUES ('a', 1), ('b', 3), ('c', 2)) AS x(v, t)").fetchone()
        assert row == ("b", "a")
        rows = conn.execute("SELECT g, first_value(v ORDER BY t) FROM (VALUES (1, 'a', 1)) AS x(g, v, t) "
                            "WHERE false GROUP BY g").fetchall()
        assert rows == []
        rows = conn.execute("SELECT g, first_value(v ORDER BY t) FILTER (WHERE t > 5) FROM "
                            "(VALUES (1, 'a', 1), (2, 'b', 7)) AS x(g, v, t) GROUP BY g ORDER BY g").fetchall()
        assert rows == [(1, None), (2, "b")]
