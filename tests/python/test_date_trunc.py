"""date_trunc's fast path (UTC and zone-less timestamps, second to week) equals the
calendar truncation, computed here in Python, on times around and before the epoch, and
NULL stays NULL."""
import datetime as dt
import random

import psycopg

GRANULARITIES = ["second", "minute", "hour", "day", "week"]


def truncate(t, g):
    if g == "second":
        return t.replace(microsecond=0)
    if g == "minute":
        return t.replace(second=0, microsecond=0)
    if g == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if g == "day" else day - dt.timedelta(days=day.weekday())


def test_date_trunc_fast_path_equals_calendar(server):
    rng = random.Random(5)
    base = dt.datetime(1969, 12, 25)
    times = [base + dt.timedelta(microseconds=rng.randint(0, 86_400_000_000 * 40)) for _ in range(300)]
    times += [dt.datetime(1970, 1, 1), dt.datetime(1969, 12, 31, 23, 59, 59, 500000), dt.datetime(2026, 11, 30, 4, 0)]
    values = ", ".join(f"(TIMESTAMP '{t.isoformat(sep=' ')}')" for t in times) + ", (CAST(NULL AS TIMESTAMP))"
    compared = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        for g in GRANULARITIES:
            for typ, tz in [("TIMESTAMP", None), ("TIMESTAMPTZ", dt.timezone.utc)]:
                rows = conn.execute(
                    f"SELECT CAST(t AS {typ}), date_trunc('{g}', CAST(t AS {typ})) FROM (VALUES {values}) v(t)"
                ).fetchall()
                assert len(rows) == len(times) + 1
                for t, got in rows:
                    if t is None:
                        assert got is None
                        continue
                    want = truncate(t.replace(tzinfo=None), g)
                    assert got.replace(tzinfo=None) == want, (g, typ, t, got)
                    if tz is not None:
                        assert got.utcoffset() == dt.timedelta(0)
                    compared += 1
        # Other granularities and zones still go through DataFusion's function.
        got = conn.execute("SELECT date_trunc('month', TIMESTAMP '2026-11-30 04:00:00')").fetchone()[0]
        assert got == dt.datetime(2026, 11, 1)
    print(f"date_trunc: {compared} values compared")
