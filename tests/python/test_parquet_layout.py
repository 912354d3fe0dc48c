"""The Parquet layout of `unified.touchpoints`, the table every analytics query scans: row
groups of at most 128Ki rows (a row group is the unit one core scans, so a million
touchpoints are spread over both cores), no dictionary for the unique touchpoint ids, and
OPTIMIZE (compaction) writes the same layout as ingest."""
import os
import tempfile

import pyarrow.parquet as pq
import psycopg
from deltalake import DeltaTable

from conftest import PINGS_SOURCE, Server, copy_pings

ROW_GROUP = 128 * 1024


def layout(lake):
    """Per live file of unified.touchpoints: (rows per row group, created_by, touchpoint_id's encodings)."""
    path = os.path.join(lake, "unified", "touchpoints")
    out = []
    for f in DeltaTable(path).file_uris():
        md = pq.ParquetFile(f.removeprefix("file://")).metadata
        col = md.schema.names.index("touchpoint_id")
        out.append(([md.row_group(i).num_rows for i in range(md.num_row_groups)], md.created_by,
                    {e for i in range(md.num_row_groups) for e in md.row_group(i).column(col).encodings}))
    return out


def test_touchpoints_row_groups_and_compaction_layout():
    n = ROW_GROUP + 9_000
    with tempfile.TemporaryDirectory() as lake:
        s = Server(lake)
        try:
            with psycopg.connect(s.url, autocommit=True) as conn:
                conn.execute(PINGS_SOURCE)
                for lo, hi in [(0, n), (n, n + 10)]:
                    assert copy_pings(conn, [f"a{i}" for i in range(lo, hi)]) == (hi - lo, hi - lo, 0)
                ingested = layout(lake)
                assert len(ingested) >= 2, ingested
                conn.execute("OPTIMIZE unified.touchpoints")
                compacted = layout(lake)
                assert conn.execute("SELECT count(*), count(DISTINCT anonymous_id) FROM unified.touchpoints"
                                    ).fetchone() == (n + 10, n + 10)
        finally:
            s.stop()
    for files, name in [(ingested, "ingest"), (compacted, "OPTIMIZE")]:
        groups = [g for f in files for g in f[0]]
        assert sum(groups) == n + 10, (name, files)
        assert max(groups) <= ROW_GROUP, (name, groups)
        for _, created_by, encodings in files:
            assert created_by.startswith("touchlake "), (name, created_by)
            assert not encodings & {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}, (name, encodings)
    # Compaction made one file of the ingest's two, in more than one row group.
    assert len(compacted) == 1 and len(compacted[0][0]) >= 2, compacted


def test_demo_lake_is_laid_out_by_person():
    """`touchlake demo` clusters unified.touchpoints by person (OPTIMIZE … ZORDER BY
    (person_id)): each person's rows are one run in file order, and a journey query then
    reads one row group of the table's several."""
    with tempfile.TemporaryDirectory() as lake:
        s = Server(lake, args=("demo", "--persons", "4000"))
        try:
            path = os.path.join(lake, "unified", "touchpoints")
            persons = [p for f in DeltaTable(path).file_uris()
                       for p in pq.read_table(f.removeprefix("file://"), columns=["person_id"])["person_id"].to_pylist()]
            known = [p for p in persons if p is not None]
            runs = sum(1 for i, p in enumerate(known) if i == 0 or p != known[i - 1])
            assert len(known) > 100_000 and runs == len(set(known)), (len(known), runs, len(set(known)))
            groups = sum(pq.ParquetFile(f.removeprefix("file://")).metadata.num_row_groups
                         for f in DeltaTable(path).file_uris())
            assert groups >= 2, groups
            with psycopg.connect(s.url, autocommit=True) as conn:
                person = known[len(known) // 2]
                plan = "\n".join(r[-1] for r in conn.execute(
                    f"EXPLAIN ANALYZE SELECT occurred_at, channel FROM unified.touchpoints WHERE person_id = '{person}'"
                ).fetchall())
            assert f"row_groups_pruned_statistics={groups} total → 1 matched" in plan, plan
        finally:
            s.stop()
