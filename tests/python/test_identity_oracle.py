"""Identity resolution (issue 4) against independent references, over the wire:
with guards off, the persons equal networkx's connected components; with the default
guards, they equal a Python reference of the documented rules (degree guard, cardinality
limits with the earliest links winning) built on networkx. Random graphs with shared
devices, e-mails shared by two member cards, and many equal timestamps."""
import datetime as dt
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


def generate(seed, rows):
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
        out.append((f"t{seed}-{i}", ts, ids))
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
    """Each touchpoint's person is the person of its highest-priority unguarded identifier."""
    with conn.cursor() as cur:
        cur.execute("SELECT identifier_type, identifier_value, person_id FROM unified.identities")
        person = {(TYPES.index(t), v): p for t, v, p in cur.fetchall()}
        cur.execute("SELECT touchpoint_id, person_id FROM unified.touchpoints")
        got = dict(cur.fetchall())
    for tid, _, ids in rows:
        nodes = sorted((TYPES.index(t), v) for t, v in ids.items())
        usable = [n for n in nodes if n not in guarded] or nodes
        assert got[tid] == person[usable[0]], tid


@pytest.mark.parametrize("guards", ["off", "default"])
def test_identity_run_matches_reference(server, guards):
    cases = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        for seed in range(12):
            rows = generate(seed, 150 + seed * 40)
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
