"""The touchpoint id set that drops duplicates at ingest, across commits that rewrite
`unified.touchpoints`: an identity run (which only sets person_id) and OPTIMIZE keep the
ids, so the set follows them through the Delta log instead of reading every touchpoint id
again; a DELETE removes ids, so the set is built again."""
import os
import re
import tempfile

import psycopg

from conftest import PINGS_SOURCE, Server, copy_pings


def id_set_lines(path):
    """The id set's refresh lines of the server log so far: (files read, rebuilt)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(path).read())
    return [(int(m.group(1)), bool(m.group(2)))
            for m in re.finditer(r"touchpoint id set at version \S+: (\d+) files read( \(rebuilt\))?", text)]


def test_id_set_follows_identity_runs_and_optimize_and_rebuilds_after_delete():
    with tempfile.TemporaryDirectory() as lake:
        log = os.path.join(lake, "server.log")
        with open(log, "w") as out:
            s = Server(lake, env={"TOUCHLAKE_LOG": "touchlake_ingest::dedup=debug,warn"}, log=out)
        try:
            with psycopg.connect(s.url, autocommit=True) as conn:
                conn.execute(PINGS_SOURCE)
                first = [f"a{i}" for i in range(1000)]
                assert copy_pings(conn, first) == (1000, 1000, 0)
                steps = [
                    ("CALL identity_run()", 0, [f"b{i}" for i in range(100)]),  # full: rewrites every file
                    ("CALL identity_run()", 100, [f"c{i}" for i in range(50)]),  # incremental: an UPDATE
                    ("OPTIMIZE unified.touchpoints", 150, []),
                ]
                for sql, earlier, new in steps:
                    conn.execute(sql)
                    before = len(id_set_lines(log))
                    # Everything ingested so far comes again, with some new records.
                    again = first + [f"b{i}" for i in range(earlier and 100)] + [f"c{i}" for i in range(max(0, earlier - 100))]
                    assert copy_pings(conn, again + new) == (len(again) + len(new), len(new), len(again)), sql
                    lines = id_set_lines(log)[before:]
                    assert lines, sql
                    # The rewritten files were followed in the log, not read again.
                    assert not any(rebuilt for _, rebuilt in lines), (sql, lines)
                    assert lines[0][0] == 0, (sql, lines)
                total = conn.execute("SELECT count(*) FROM unified.touchpoints").fetchone()[0]
                assert total == 1150
                # A DELETE takes ids out: the set is built again, and the deleted record
                # is accepted when it comes again.
                conn.execute("DELETE FROM unified.touchpoints WHERE anonymous_id = 'a7'")
                before = len(id_set_lines(log))
                assert copy_pings(conn, first) == (1000, 1, 999)
                assert any(rebuilt for _, rebuilt in id_set_lines(log)[before:])
        finally:
            s.stop()
