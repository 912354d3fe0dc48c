"""Identity resolution (issue 4) against independent references, over the wire:
with guards off, the persons equal networkx's connected components; with the default
guards, they equal a Python reference of the documented rules (degree guard, cardinality
limits with the earliest links winning) built on networkx. Random graphs with shared
devices, e-mails shared by two member cards, and many equal timestamps."""
import datetime as dt
import hashlib
import io
import random

import networkx as nx
import psycopg
import pytest

TYPES = ["user_id", "member_id", "phone", "email", "openid", "device_id", "anonymous_id"]
STRONG = {"user_id", "member_id", "phone", "email"}
MAX_DEGREE = 5
LIMIT = {"user_id": 1, "member_id": 1}
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def value(rng, ty, pool):
    n = rng.randrange(pool)
    return {
        "user_id": f"u{n}",
        "member_id": f"M{n:05d}",
        "phone": f"+86138{n:04d}{(n * 7919) % 10000:04d}",
        "email": f"p{n}@mail.example.com",
        "openid": f"o{n}",
        "device_id": f"dev-{n}",
        "anonymous_id": f"anon-{n}",
    }[ty]


def generate(seed, rows, hex_ids=False):
    """Random touchpoints. With `hex_ids` their ids are 32 hex digits like ingest's (a full
    run places those by id) and the last row repeats the first one's id with other
    identifiers (it must be placed by its identifiers)."""
    rng = random.Random(seed)
    pools = {t: rng.randint(rows // 6, rows // 2) for t in TYPES}
    pools["device_id"] = rng.randint(3, 12)  # few devices: some are shared by many
    out = []
    for i in range(rows):
        k = rng.choice([1, 2, 2, 2, 3])
        ids = {}
        for ty in rng.sample(TYPES, k):
            ids[ty] = value(rng, ty, pools[ty])
        ts = BASE + dt.timedelta(minutes=rng.randrange(rows // 3))  # many ties
        tid = hashlib.md5(f"t{seed}-{i}".encode()).hexdigest() if hex_ids else f"t{seed}-{i}"
        out.append((tid, ts, ids))
    if hex_ids and len(out) > 1:
        out[-1] = (out[0][0], out[-1][1], out[-1][2])
    return out


def edges_of(rows):
    """(a, b) → (first_seen, last_seen) with a < b as (type index, value)."""
    edges = {}
    for _, ts, ids in rows:
        nodes = sorted((TYPES.index(t), v) for t, v in ids.items())
        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                k = (nodes[i], nodes[j])
                f, l = edges.get(k, (ts, ts))
                edges[k] = (min(f, ts), max(l, ts))
    return edges


def components_unguarded(rows):
    g = nx.Graph()
    for _, _, ids in rows:
        for t, v in ids.items():
            g.add_node((TYPES.index(t), v))
    g.add_edges_from(edges_of(rows).keys())
    return {frozenset(c) for c in nx.connected_components(g)}


def components_guarded(rows):
    """The documented rules: an identifier with more than MAX_DEGREE distinct neighbours
    of one strong type is no connector; then links in (first_seen, last_seen, endpoints)
    order, skipping one that would give a person two user_ids or two member_ids."""
    edges = edges_of(rows)
    g = nx.Graph()
    for _, _, ids in rows:
        for t, v in ids.items():
            g.add_node((TYPES.index(t), v))
    g.add_edges_from(edges.keys())
    guarded = set()
    for node in g.nodes:
        per_type = {}
        for nb in g.neighbors(node):
            per_type[nb[0]] = per_type.get(nb[0], 0) + 1
        if any(TYPES[t] in STRONG and n > MAX_DEGREE for t, n in per_type.items()):
            guarded.add(node)
    parent = {n: n for n in g.nodes}
    members = {n: [n] for n in g.nodes}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for (a, b), (f, l) in sorted(edges.items(), key=lambda e: (e[1][0], e[1][1], e[0][0], e[0][1])):
        if a in guarded or b in guarded:
            continue
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        joined = members[ra] + members[rb]
        if any(sum(1 for n in joined if TYPES[n[0]] == t) > lim for t, lim in LIMIT.items()):
            continue
        parent[rb] = ra
        members[ra] = joined
        del members[rb]
    return {frozenset(m) for m in members.values()}, guarded


def load(conn, rows):
    with conn.cursor() as cur:
        cur.execute("DELETE FROM unified.touchpoints")
        buf = io.StringIO()
        for tid, ts, ids in rows:
            vals = [tid, ts.isoformat(), "web", "online", "page_view", "oracle", "r", ts.isoformat()]
            vals += [ids.get(t, "\\N") for t in TYPES]
            buf.write("\t".join(vals) + "\n")
        cols = "touchpoint_id, occurred_at, channel, channel_type, event_type, source, run_id, ingested_at, " + ", ".join(TYPES)
        with cur.copy(f"COPY unified.touchpoints ({cols}) FROM STDIN") as copy:
            copy.write(buf.getvalue())


def ours(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT identifier_type, identifier_value, person_id FROM unified.identities")
        by_person = {}
        for t, v, p in cur.fetchall():
            by_person.setdefault(p, set()).add((TYPES.index(t), v))
        return {frozenset(s) for s in by_person.values()}


def check_touchpoints(conn, rows, guarded):
    """Each touchpoint's person is the person of its highest-priority unguarded identifier
    (rows sharing a touchpoint id each by their own identifiers)."""
    with conn.cursor() as cur:
        cur.execute("SELECT identifier_type, identifier_value, person_id FROM unified.identities")
        person = {(TYPES.index(t), v): p for t, v, p in cur.fetchall()}
        cur.execute(f"SELECT touchpoint_id, person_id, {', '.join(TYPES)} FROM unified.touchpoints")
        stored = cur.fetchall()
    assert len(stored) == len(rows)
    assert sorted(r[0] for r in stored) == sorted(tid for tid, _, _ in rows)
    for tid, got, *values in stored:
        nodes = sorted((i, v) for i, v in enumerate(values) if v is not None)
        usable = [n for n in nodes if n not in guarded] or nodes
        assert got == person[usable[0]], tid


@pytest.mark.parametrize("guards", ["off", "default"])
def test_identity_run_matches_reference(server, guards):
    cases = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        # On an empty lake the run creates the contract tables and finds no one.
        assert conn.execute("CALL identity_run()").fetchone() is not None
        for seed in range(12):
            rows = generate(seed, 150 + seed * 40, hex_ids=seed % 2 == 0)
            load(conn, rows)
            conn.execute(f"CALL identity_run('guards={guards}')")
            if guards == "off":
                want, guarded = components_unguarded(rows), set()
            else:
                want, guarded = components_guarded(rows)
            got = ours(conn)
            assert got == want, f"seed {seed}: {len(got)} persons vs {len(want)} in the reference"
            check_touchpoints(conn, rows, guarded)
            cases += 1
    print(f"identity ({guards}): {cases} random graphs equal to the reference")


def append(conn, rows):
    """COPY rows into unified.touchpoints (appending)."""
    buf = io.StringIO()
    for tid, ts, ids in rows:
        vals = [tid, ts.isoformat(), "web", "online", "page_view", "oracle", "r", ts.isoformat()]
        vals += [ids.get(t, "\\N") for t in TYPES]
        buf.write("\t".join(vals) + "\n")
    cols = "touchpoint_id, occurred_at, channel, channel_type, event_type, source, run_id, ingested_at, " + ", ".join(TYPES)
    with conn.cursor() as cur:
        with cur.copy(f"COPY unified.touchpoints ({cols}) FROM STDIN") as copy:
            copy.write(buf.getvalue())


def mapping(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT identifier_type, identifier_value, person_id FROM unified.identities")
        return {(TYPES.index(t), v): p for t, v, p in cur.fetchall()}


def test_increments_equal_all_at_once(server):
    """Three increments resolved incrementally give the partition of all rows at once (and
    of the reference); a person none of whose identifiers a new row carries keeps its id;
    every person that disappears was merged (logged) or split."""
    compared = kept_ids = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CALL identity_run()")
        for seed in range(100, 106):
            rows = generate(seed, 600)
            conn.execute("DELETE FROM unified.touchpoints")
            # The rows arrive in time order, in three parts.
            rows.sort(key=lambda r: r[1])
            parts = [rows[:300], rows[300:450], rows[450:]]
            modes = []
            before = None
            seen = []
            for k, part in enumerate(parts):
                append(conn, part)
                modes.append(conn.execute("CALL identity_run()").fetchone()[1])
                after = mapping(conn)
                # Every touchpoint, old or new, is placed as a full run would place it
                # (an increment rewrites only the rows whose person may have changed).
                seen += part
                check_touchpoints(conn, seen, components_guarded(seen)[1])
                if before is not None:
                    touched = {(TYPES.index(t), v) for _, _, ids in part for t, v in ids.items()}
                    hit = {clusters[n] for n in touched if n in clusters}
                    # Clusters no new row reached are not resolved again: same persons.
                    for n, p in before.items():
                        if clusters[n] not in hit:
                            assert after.get(n) == p, f"seed {seed} part {k}: {n} moved from {p} to {after.get(n)}"
                    # A person with the same identifiers as before keeps its id.
                    old_sets = {}
                    for n, p in before.items():
                        old_sets.setdefault(p, set()).add(n)
                    new_sets = {}
                    for n, p in after.items():
                        new_sets.setdefault(p, set()).add(n)
                    same = {frozenset(v): p for p, v in old_sets.items()}
                    for p, v in new_sets.items():
                        if frozenset(v) in same:
                            assert same[frozenset(v)] == p, f"seed {seed}: {sorted(v)} changed id"
                    # A person that disappeared was merged into another, and logged.
                    gone = set(before.values()) - set(after.values())
                    merged = {r[0] for r in conn.execute(
                        "SELECT from_person_id FROM unified.identity_merges").fetchall()}
                    assert gone <= merged, f"seed {seed}: {sorted(gone - merged)} disappeared without a merge"
                    kept_ids += len(set(before.values()) & set(after.values()))
                before = after
                clusters = {
                    (TYPES.index(t), v): c for t, v, c in conn.execute(
                        "SELECT identifier_type, identifier_value, cluster_id FROM unified.identities").fetchall()
                }
            # After the DELETE of the previous data set the first run is full (on the empty
            # lake it continues from the empty run).
            first = "incremental" if seed == 100 else "full"
            assert modes == [first, "incremental", "incremental"], modes
            incremental = ours(conn)
            want, _ = components_guarded(rows)
            assert incremental == want, f"seed {seed}: incremental differs from the reference"
            conn.execute("CALL identity_run('mode=full')")
            assert ours(conn) == incremental, f"seed {seed}: a full run differs"
            compared += 1
    assert kept_ids > 0
    print(f"identity increments: {compared} data sets, 3 increments each, equal to all at once; "
          f"{kept_ids} person ids carried across increments")


def test_full_rerun_rewrites_touchpoints_only_on_change(server):
    """A full run that gives every touchpoint the person it has already leaves
    unified.touchpoints as it is (no new table version); one that changes a person (the
    guards turned off, a new row) rewrites it, and every row is placed as the reference
    says."""
    rows = generate(21, 400, hex_ids=True)
    want, guarded = components_guarded(rows)
    unguarded = components_unguarded(rows)
    assert unguarded != want  # the shared devices join persons without the guards

    def version(conn):
        return conn.execute(
            "SELECT touchpoints_version FROM quality.identity_runs ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()[0]

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CALL identity_run()")
        load(conn, rows)
        conn.execute("CALL identity_run('mode=full')")
        first = version(conn)
        conn.execute("CALL identity_run('mode=full')")
        assert version(conn) == first
        assert ours(conn) == want
        check_touchpoints(conn, rows, guarded)

        conn.execute("CALL identity_run('mode=full', 'guards=off')")
        second = version(conn)
        assert second > first
        assert ours(conn) == unguarded
        check_touchpoints(conn, rows, set())

        more = [(hashlib.md5(b"one more").hexdigest(), BASE, {"phone": "+8613900000000", "openid": "o-new"})]
        append(conn, more)
        conn.execute("CALL identity_run('mode=full', 'guards=off')")
        assert version(conn) > second
        assert ours(conn) == components_unguarded(rows + more)
        check_touchpoints(conn, rows + more, set())


def test_incremental_run_touching_many_persons(server):
    """An increment that touches 15,000 persons at once (the replace predicates once held
    them as IN lists, which overflowed the stack in delta-rs and killed the server)."""
    n = 15_000
    base = [(f"b{i}", BASE + dt.timedelta(seconds=i), {"phone": f"+86139{i:08d}", "anonymous_id": f"a{i}"})
            for i in range(n)]
    more = [(f"m{i}", BASE + dt.timedelta(days=1, seconds=i), {"phone": f"+86139{i:08d}", "device_id": f"d{i}"})
            for i in range(n)]
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CALL identity_run()")
        append(conn, base)
        conn.execute("CALL identity_run()")
        before = mapping(conn)
        append(conn, more)
        row = conn.execute("CALL identity_run()").fetchone()
        assert row[1] == "incremental"
        after = mapping(conn)
    assert len(after) == 3 * n
    # Every person kept its id and gained its device.
    for i in range(0, n, 997):
        p = before[(TYPES.index("phone"), f"+86139{i:08d}")]
        assert after[(TYPES.index("device_id"), f"d{i}")] == p
    assert len(set(after.values())) == n


def test_increment_replaces_rows_with_deletion_vectors(server):
    """An increment does not rewrite unified.identities and unified.persons: the replaced
    rows are marked deleted in deletion vectors of the files that hold them and the new
    rows appended, in one commit per table. Another Delta reader (Python deltalake) sees
    the same rows as the server."""
    import json
    import os

    from deltalake import DeltaTable, QueryBuilder

    n, touched = 3000, 300
    base = [(f"b{i}", BASE + dt.timedelta(seconds=i), {"phone": f"+86139{i:08d}", "anonymous_id": f"a{i}"})
            for i in range(n)]
    identities = os.path.join(server.lake, "unified", "identities")
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CALL identity_run()")
        append(conn, base)
        conn.execute("CALL identity_run()")
        for k in range(2):  # the second increment adds to the vectors the first wrote
            more = [(f"m{i}", BASE + dt.timedelta(days=1, seconds=i), {"phone": f"+86139{i:08d}", "device_id": f"d{i}"})
                    for i in range(k, n, n // touched)]
            before = mapping(conn)
            append(conn, more)
            row = conn.execute("CALL identity_run()").fetchone()
            assert row[1] == "incremental"
            after = mapping(conn)
            # The touched persons gained one identifier each and kept their ids.
            assert len(after) == len(before) + touched
            assert all(after[k] == p for k, p in before.items())
            log = os.path.join(identities, "_delta_log")
            commits = sorted(f for f in os.listdir(log) if f.endswith(".json"))
            rows_of = {}  # every data file's row count, from the adds of the whole log
            for c in commits:
                for line in open(os.path.join(log, c)):
                    a = json.loads(line).get("add")
                    if a:
                        rows_of[a["path"]] = json.loads(a["stats"])["numRecords"]
            actions = [json.loads(line) for line in open(os.path.join(log, commits[-1]))]
            removes = [a["remove"] for a in actions if "remove" in a]
            adds = [a["add"] for a in actions if "add" in a]
            kept = [a for a in adds if a.get("deletionVector")]
            new = [a for a in adds if not a.get("deletionVector")]
            # No file is rewritten: a file the commit removes comes back with a deletion
            # vector, or all its rows were replaced.
            assert {a["path"] for a in kept} <= {r["path"] for r in removes}
            # What the commit writes is the rows of the touched persons: their rows
            # before are marked deleted, their rows after appended.
            hit = {after[(TYPES.index("device_id"), f"d{i}")] for i in range(k, n, n // touched)}
            written = sum(json.loads(a["stats"])["numRecords"] for a in new)
            now_deleted = {a["path"]: a["deletionVector"]["cardinality"] for a in kept}
            deleted = sum(now_deleted.get(r["path"], rows_of[r["path"]])
                          - (r.get("deletionVector") or {}).get("cardinality", 0) for r in removes)
            assert written == sum(1 for p in after.values() if p in hit)
            assert deleted == sum(1 for p in before.values() if p in hit)
            assert written < len(after) / 5
            if k == 1:  # a file with a vector gets a vector of its old and new deletions
                assert any(r.get("deletionVector") for r in removes)
        wire = sorted(conn.execute(
            "SELECT identifier_type, identifier_value, person_id FROM unified.identities").fetchall())
        persons = sorted(r[0] for r in conn.execute("SELECT person_id FROM unified.persons").fetchall())
    dt_ = DeltaTable(identities)
    other = QueryBuilder().register("i", dt_).execute(
        "SELECT identifier_type, identifier_value, person_id FROM i").read_all()
    assert sorted(zip(*[other.column(c).to_pylist() for c in range(3)])) == wire
    p = QueryBuilder().register("p", DeltaTable(os.path.join(server.lake, "unified", "persons"))).execute(
        "SELECT person_id FROM p").read_all()
    assert sorted(p.column(0).to_pylist()) == persons
    print(f"deletion vectors: 2 increments of {touched} persons over {n}; Python deltalake reads "
          f"{len(wire)} identities and {len(persons)} persons as the server does")


def test_mostly_new_touchpoints_are_resolved_in_full(server):
    """When over a quarter of the touchpoints (and more than 100,000) are new, the run
    resolves everything instead of continuing from the previous mapping (an increment of
    4M new rows after an empty run took twice as long as a full run); a small increment
    after it continues incrementally, with the same persons as a full run."""
    n = 110_000
    rows = [(f"n{i}", BASE + dt.timedelta(seconds=i), {"phone": f"+86137{i:08d}", "anonymous_id": f"z{i}"})
            for i in range(n)]
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CALL identity_run()")
        append(conn, rows)
        row = conn.execute("CALL identity_run()").fetchone()
        assert row[1] == "full" and "are new" in row[-1], row
        append(conn, [(f"s{i}", BASE + dt.timedelta(days=1), {"phone": f"+86137{i:08d}", "device_id": f"y{i}"})
                      for i in range(0, n, 100)])
        row = conn.execute("CALL identity_run()").fetchone()
        assert row[1] == "incremental" and row[-1] is None, row
        persons = conn.execute("SELECT count(*) FROM unified.persons").fetchone()[0]
        assert persons == n
