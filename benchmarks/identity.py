"""Identity benchmark (issue 4): a full identity run over N persons (7 identifiers each,
4 touchpoints each, 19 distinct links per person: ~19M edges at 1M persons) and an
incremental run after 1% more touchpoints (half of them of new persons, half of known
persons with a new anonymous id), timed over the wire (`CALL identity_run`), and
in the same run, on the same edges: networkx connected components and a DuckDB
label-propagation SQL (the SQL-only method of warehouse identity tools: every node takes
the smallest label of its neighbours until nothing changes). The number of persons is
cross-checked between the three. Medians of --runs; appends a section to RESULTS.md with
--write.

The increments run in one server, as `touchlake serve` runs them after ingest: the touchpoints
are appended (by Python deltalake) while it runs. The first increment after the full runs
hashes what the full run wrote to `unified.identities` (the server keeps per-row hashes of
its data files, see ingest/src/files/hashes.rs, and computes them in the background after a
run: --idle gives it time) and is reported on its own row; the median is of the --runs
increments after it.

    python benchmarks/identity.py [--persons 1000000] [--runs 3] [--binary PATH] [--write]
        [--no-networkx]
"""
import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from common import Touchlake

TYPES = ["user_id", "member_id", "phone", "email", "openid", "device_id", "anonymous_id"]
# The identifiers each of a person's four touchpoints carries.
ROWS = [
    ["user_id", "member_id", "phone", "email"],
    ["phone", "email", "openid", "device_id"],
    ["device_id", "anonymous_id", "user_id", "openid"],
    ["member_id", "anonymous_id", "email", "device_id"],
]
BASE_US = 1_767_225_600_000_000  # 2026-01-01


def ids(ty, p):
    """The identifier of type `ty` of persons `p` (an int64 array), as strings."""
    s = pc.cast(pa.array(p, pa.int64()), pa.string())
    prefix = {"user_id": "u", "member_id": "M", "phone": "+86139", "email": "e",
              "openid": "o", "device_id": "d", "anonymous_id": "a"}[ty]
    if ty == "phone":
        s = pc.utf8_lpad(s, 8, "0")
    out = pc.binary_join_element_wise(pa.scalar(prefix), s, "")
    if ty == "email":
        out = pc.binary_join_element_wise(out, pa.scalar("@mail.example.com"), "")
    return out


def mix64(x):
    """splitmix64's finalizer over a uint64 array (wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def touchpoint_ids(tag, k, persons):
    """32 hex digits hashed from (tag, k, person), as ingest's ids are (the contract's
    `touchpoint_id` is a hash of the source and natural key)."""
    seed = np.uint64(int.from_bytes(hashlib.blake2b(f"{tag}{k}".encode(), digest_size=8).digest(), "little"))
    x = np.asarray(persons, dtype=np.uint64) ^ seed
    with np.errstate(over="ignore"):
        hi, lo = mix64(x), mix64(x ^ np.uint64(0x9E3779B97F4A7C15))
    return pa.array(np.char.add(np.char.mod("%016x", hi), np.char.mod("%016x", lo)))


def touchpoints(schema, persons, tag, seed, spec=ROWS, numbers=None):
    """A table of one touchpoint per person in `persons` and entry of `spec` (the
    identifier types it carries), in the lake's schema; `numbers[type]` overrides the
    number an identifier is made of (default: the person's)."""
    rng = np.random.default_rng(seed)
    numbers = numbers or {}
    parts = []
    for k, present in enumerate(spec):
        n = len(persons)
        cols = {}
        for f in schema:
            name = f.name
            if name == "touchpoint_id":
                cols[name] = touchpoint_ids(tag, k, persons)
            elif name in ("occurred_at", "ingested_at"):
                cols[name] = pa.array(BASE_US + rng.integers(0, 86_400_000_000 * 90, n), pa.timestamp("us", tz="UTC"))
            elif name in ("channel", "source"):
                cols[name] = pa.array(["bench"] * n, pa.string())
            elif name == "channel_type":
                cols[name] = pa.array(["online"] * n, pa.string())
            elif name == "event_type":
                cols[name] = pa.array(["page_view"] * n, pa.string())
            elif name == "run_id":
                cols[name] = pa.array([tag] * n, pa.string())
            elif name in TYPES and name in present:
                cols[name] = ids(name, numbers.get(name, persons))
            else:
                cols[name] = pa.nulls(n, f.type)
        parts.append(pa.table({f.name: pc.cast(cols[f.name], f.type) for f in schema}, schema=schema))
    return pa.concat_tables(parts)


def edges(persons):
    """The distinct edges of those persons, as (int64, int64) node numbers: node = person * 7 + type."""
    p = np.asarray(persons, dtype=np.int64)
    pairs = set()
    for present in ROWS:
        t = [TYPES.index(x) for x in present]
        for i in range(len(t)):
            for j in range(i + 1, len(t)):
                pairs.add((min(t[i], t[j]), max(t[i], t[j])))
    a = np.concatenate([p * 7 + x for x, _ in sorted(pairs)])
    b = np.concatenate([p * 7 + y for _, y in sorted(pairs)])
    return a, b


LOG = os.path.join(tempfile.gettempdir(), "touchlake-identity-bench.log")


def server(binary, lake):
    """`touchlake serve` on the lake, its log appended to LOG."""
    return Touchlake(binary, lake, open(LOG, "a"))


def call(srv, sql):
    """(seconds, the first row) of `sql` over the server's connection."""
    t = time.perf_counter()
    row = srv.run(sql)[0]
    return time.perf_counter() - t, row


def count_persons(srv):
    return srv.run("SELECT count(*) FROM unified.persons")[0][0]


def duckdb_label_propagation(a, b):
    con = duckdb.connect()
    con.execute("SET threads = 2")
    t = time.perf_counter()
    e = pa.table({"a": a, "b": b})
    con.register("e_in", e)
    con.execute("CREATE TABLE e AS SELECT a, b FROM e_in UNION ALL SELECT b, a FROM e_in")
    con.execute("CREATE TABLE l AS SELECT a AS n, min(least(a, b)) AS c FROM e GROUP BY a")
    rounds = 0
    while True:
        rounds += 1
        con.execute("CREATE OR REPLACE TABLE l2 AS SELECT l.n, least(l.c, min(m.c)) AS c "
                    "FROM l JOIN e ON e.a = l.n JOIN l m ON m.n = e.b GROUP BY l.n, l.c")
        changed = con.execute("SELECT count(*) FROM l JOIN l2 USING (n) WHERE l.c <> l2.c").fetchone()[0]
        con.execute("DROP TABLE l; ALTER TABLE l2 RENAME TO l")
        if changed == 0:
            break
    n = con.execute("SELECT count(DISTINCT c) FROM l").fetchone()[0]
    return time.perf_counter() - t, n, rounds


def networkx_components(a, b):
    import networkx as nx
    t = time.perf_counter()
    g = nx.Graph()
    g.add_edges_from(zip(a.tolist(), b.tolist()))
    n = nx.number_connected_components(g)
    return time.perf_counter() - t, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=os.path.expanduser("~/.cache/touchlake-target/release/touchlake"))
    ap.add_argument("--increment", type=float, default=0.01, help="touchpoints added before each incremental run, as a share of persons")
    ap.add_argument("--no-networkx", action="store_true")
    ap.add_argument("--networkx-runs", type=int, default=1, help="networkx is slow and large: 1 run by default")
    ap.add_argument("--idle", type=float, default=0.0,
                    help="seconds the server is left idle after the full runs (it hashes unified.identities in the background)")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    n = a.persons
    extra = max(2, int(n * a.increment))
    full, incr = [], []
    with tempfile.TemporaryDirectory() as work:
        print(f"server log: {LOG}", flush=True)
        lake = os.path.join(work, "lake")
        os.makedirs(lake)
        srv = server(a.binary, lake)
        call(srv, "CALL identity_run()")  # creates the contract tables
        srv.stop()
        path = os.path.join(lake, "unified", "touchpoints")
        schema = DeltaTable(path).schema().to_arrow()
        schema = pa.schema(schema) if not isinstance(schema, pa.Schema) else schema
        t = time.perf_counter()
        step = 250_000
        for lo in range(0, n, step):
            write_deltalake(path, touchpoints(schema, np.arange(lo, min(n, lo + step)), "b", lo), mode="append")
        print(f"loaded {4 * n:,} touchpoints in {time.perf_counter() - t:.1f}s", flush=True)
        srv = server(a.binary, lake)
        for r in range(a.runs):
            s, row = call(srv, "CALL identity_run('mode=full')")
            full.append(s)
            print(f"full run {r + 1}: {s:.2f}s {row}", flush=True)
        persons_full = count_persons(srv)
        time.sleep(a.idle)
        increments = a.runs + 1
        for r in range(increments):
            # 1% more touchpoints: half of new persons, half of known persons seen with a
            # new anonymous id (their clusters are resolved again).
            new = np.arange(n + r * extra, n + r * extra + extra // 2)
            rng = np.random.default_rng(r)
            known = rng.choice(n, extra - extra // 2, replace=False)
            write_deltalake(path, touchpoints(schema, new, f"i{r}-", 1000 + r, ROWS[:2]), mode="append")
            write_deltalake(path, touchpoints(schema, known, f"k{r}-", 2000 + r, [["phone", "anonymous_id"]],
                                              {"anonymous_id": known + 10 * n}), mode="append")
            s, row = call(srv, "CALL identity_run()")
            incr.append(s)
            print(f"incremental run {r + 1}: {s:.2f}s {row}", flush=True)
        persons_incr = count_persons(srv)
        unplaced = srv.run("SELECT count(*) FROM unified.touchpoints WHERE person_id IS NULL")[0][0]
        assert unplaced == 0, f"{unplaced} touchpoints without a person after the incremental runs"
        srv.stop()
    ea, eb = edges(np.arange(n))
    print(f"{len(ea):,} edges", flush=True)
    dd = [duckdb_label_propagation(ea, eb) for _ in range(a.runs)]
    for s, comps, rounds in dd:
        print(f"duckdb label propagation: {s:.2f}s, {comps:,} components, {rounds} rounds", flush=True)
    assert all(d[1] == persons_full for d in dd), (persons_full, dd)
    nx_runs = []
    if not a.no_networkx:
        nx_runs = [networkx_components(ea, eb) for _ in range(a.networkx_runs)]
        for s, comps in nx_runs:
            print(f"networkx: {s:.2f}s, {comps:,} components", flush=True)
        assert all(x[1] == persons_full for x in nx_runs)
    assert persons_incr == persons_full + increments * (extra // 2), (persons_incr, persons_full)
    med = statistics.median
    # The first full run is on a lake never resolved (every touchpoint gets its person
    # written) in a server just started; the later ones find every row's person
    # unchanged and leave unified.touchpoints as it is.
    rows = [("touchlake full run (over the wire)", med(full)),
            ("touchlake first full run (new server, every row rewritten; 1 run)", full[0]),
            (f"touchlake first incremental run, {a.idle:g} s after the full runs (1 run)", incr[0]),
            ("touchlake incremental run, +1% touchpoints", med(incr[1:])),
            ("duckdb label propagation SQL (full)", med([d[0] for d in dd]))]
    if nx_runs:
        rows.append((f"networkx connected components (full; {len(nx_runs)} run)", med([x[0] for x in nx_runs])))
    for name, s in rows:
        print(f"{name:45} median {s:8.2f}s")
    if a.write:
        cpu = platform.processor() or platform.machine()
        lines = [f"## Identity ({n:,} persons, {4 * n:,} touchpoints, {len(ea):,} edges; median of {a.runs}; "
                 f"{os.cpu_count()} cores, {cpu}; duckdb {duckdb.__version__})", "",
                 "| engine | median s | vs touchlake full |", "|---|---|---|"]
        base = med(full)
        for name, s in rows:
            lines.append(f"| {name} | {s:.2f} | {s / base:.2f}× |")
        lines.append("")
        lines.append(f"Persons: {persons_full:,} (all three engines agree). Targets: full ≤ 10 s, incremental ≤ 1 s.")
        with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    sys.exit(main())
