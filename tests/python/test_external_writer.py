"""A Delta table written and appended by another engine (Python deltalake) is served."""
import os
import time

import pyarrow as pa
import psycopg
from deltalake import write_deltalake


def wait_for(conn, sql, expected, seconds=10):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            last = conn.execute(sql).fetchone()[0]
            if last == expected:
                return last
        except psycopg.Error as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{sql}: expected {expected}, last saw {last!r}")


def test_table_written_by_deltalake_is_visible_and_stays_current(server):
    with psycopg.connect(server.url, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        path = os.path.join(server.lake, "external", "events")
        batch = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "channel": ["app", "web", "app"]})
        write_deltalake(path, batch)
        wait_for(conn, "SELECT count(*) FROM external.events", 3)
        write_deltalake(path, pa.table({"id": pa.array([4], pa.int64()), "channel": ["sms"]}), mode="append")
        wait_for(conn, "SELECT count(*) FROM external.events", 4)
        assert conn.execute("SELECT channel FROM external.events WHERE id = 4").fetchone() == ("sms",)
