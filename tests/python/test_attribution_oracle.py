"""Attribution functions (functions.md §H) over the wire against independent Python
references on generated journeys:

- attribution_weights (every rule-based model and option) against a Python implementation
  of the documented rules, exactly (1e-12);
- markov_attribution / markov_transition_matrix against a numpy absorbing-chain solve
  ((I - Q) x = R, removal effects), orders 1 and 2, with and without self-loops (1e-9);
- shapley_attribution against an itertools brute force over all orders of the channels
  (exact sets, subset sums, conversion rates; 1e-9), and its sampled estimate above
  max_channels within 2%.

Each test prints how many cases it compared."""
import datetime
import itertools
import json
import math
import random

import numpy as np
import psycopg
import pytest

CHANNELS = ["direct", "email", "search", "social", "store", "app"]
BASE = datetime.datetime(2026, 3, 1)


def gen_conversions(seed, n=400):
    rng = random.Random(seed)
    rows = []
    for cid in range(n):
        conv = BASE + datetime.timedelta(days=rng.randint(0, 60), hours=rng.randint(0, 23))
        for _ in range(rng.randint(0, 9)):
            back = rng.choice([0, 0, 3600, 86400, 3 * 86400, 10 * 86400, 29 * 86400, 31 * 86400, -3600])
            ts = conv - datetime.timedelta(seconds=back + rng.choice([0, 0, 60]))
            ch = rng.choice(CHANNELS + [None])
            rows.append((cid, ch, ts, conv, rng.random() < 0.15))
    rng.shuffle(rows)
    return rows


def reference(model, rows, conv, opts):
    """The documented rules of attribution_weights for one conversion's rows."""
    lookback = opts.get("lookback", 30 * 86400)
    same = opts.get("same_ts_included", True)
    ignore = opts.get("ignore", ["direct"] if model == "last_non_direct" else [])
    el = [(ts, ch, m) for ch, ts, m in rows if ch is not None
          and (ts <= conv if same else ts < conv) and ts >= conv - datetime.timedelta(seconds=lookback)]
    el.sort(key=lambda t: (t[0], t[1], not t[2]))
    if opts.get("dedupe"):
        el = [t for i, t in enumerate(el) if i == 0 or el[i - 1][1] != t[1]]
    if any(t[1] not in ignore for t in el):
        el = [t for t in el if t[1] not in ignore]
    n = len(el)
    if n == 0:
        return [("(none)", conv, 1.0)] if opts.get("credit_none") else []
    if model == "first_click":
        w = [1.0] + [0.0] * (n - 1)
    elif model in ("last_click", "last_non_direct"):
        w = [0.0] * (n - 1) + [1.0]
    elif model == "linear":
        w = [1.0 / n] * n
    elif model == "position_based":
        f, l = opts.get("first", 0.4), opts.get("last", 0.4)
        w = [1.0] if n == 1 else [0.5, 0.5] if n == 2 else [f] + [(1 - f - l) / (n - 2)] * (n - 2) + [l]
    elif model == "time_decay":
        hl = opts.get("half_life", 7 * 86400)
        w = [0.5 ** ((conv - t[0]).total_seconds() / hl) for t in el]
    elif model == "w_shaped":
        if n <= 3:
            w = [1.0 / n] * n
        else:
            lead = next((i for i in range(1, n - 1) if el[i][2]), n // 2)
            w = [0.1 / (n - 3)] * n
            w[0] = w[lead] = w[-1] = 0.3
    elif model == "custom":
        fixed = opts["weights"]
        w = [fixed[i] if i < len(fixed) else 0.0 for i in range(n)]
    total = sum(w)
    if total <= 0:
        return []
    return [(t[1], t[0], x / total) for t, x in zip(el, w) if x > 0]


CASES = [
    ("first_click", "", {}), ("last_click", "", {}), ("last_non_direct", "", {}),
    ("linear", "", {}), ("position_based", "", {}),
    ("position_based", "first=0.3, last=0.5", {"first": 0.3, "last": 0.5}),
    ("time_decay", "", {}), ("time_decay", "half_life=2 days, lookback=7 days", {"half_life": 2 * 86400, "lookback": 7 * 86400}),
    ("w_shaped", "", {}), ("custom", "weights=0.5|0.3|0.2", {"weights": [0.5, 0.3, 0.2]}),
    ("linear", "same_ts_included=false, dedupe_consecutive=true, ignore_channels=direct|store",
     {"same_ts_included": False, "dedupe": True, "ignore": ["direct", "store"]}),
    ("last_click", "credit_none=true, lookback=1 hour", {"credit_none": True, "lookback": 3600}),
]


def test_attribution_weights_match_the_rules(server):
    rows = gen_conversions(5)
    by_conv = {}
    for cid, ch, ts, conv, lead in rows:
        by_conv.setdefault(cid, (conv, []))[1].append((ch, ts, lead))
    compared = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE public.att (cid bigint, channel text, ts timestamp, conv timestamp, lead boolean)")
            with cur.copy("COPY public.att FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        for model, opts, ref_opts in CASES:
            got = dict(conn.execute(
                f"SELECT cid, attribution_weights('{model}', channel, ts, conv, '{opts}', lead) FROM public.att GROUP BY cid"
            ).fetchall())
            for cid, (conv, touches) in by_conv.items():
                want = reference(model, touches, conv, ref_opts)
                have = [(e["channel"], datetime.datetime.fromisoformat(e["ts"]), e["weight"]) for e in json.loads(got[cid])]
                assert len(have) == len(want), (model, opts, cid, have, want)
                for h, w in zip(have, want):
                    assert h[0] == w[0] and h[1] == w[1] and abs(h[2] - w[2]) < 1e-12, (model, opts, cid, have, want)
                if want:
                    assert abs(sum(x[2] for x in have) - 1.0) < 1e-12
                compared += 1
        for bad in ["SELECT attribution_weights('magic', 'a', now(), now())",
                    "SELECT attribution_weights('time_decay', 'a', now(), now(), 'half_life=0 days')",
                    "SELECT attribution_weights('custom', 'a', now(), now())",
                    "SELECT attribution_weights('linear', 'a', now(), now(), 'colour=red')"]:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute(bad)
    print(f"attribution_weights: {compared} conversions x models compared with the Python rules")


def gen_paths(seed, n=120, channels=CHANNELS):
    rng = random.Random(seed)
    out = {}
    for _ in range(n):
        path = tuple(rng.choice(channels) for _ in range(rng.randint(1, 6)))
        conv = rng.choice([0, 0, 1, 2, 5])
        nulls = rng.choice([0, 1, 3, 10])
        if conv + nulls == 0:
            nulls = 1
        c, v, nl = out.get(path, (0, 0.0, 0))
        out[path] = (c + conv, v + conv * rng.choice([10.0, 25.5]), nl + nulls)
    return out


def numpy_markov(paths, order=1, self_loops=False):
    """Absorbing-chain reference: P(conversion) and per-channel removal effects."""
    seqs = []
    for path, (conv, val, nulls) in paths.items():
        p = list(path)
        if not self_loops:
            p = [c for i, c in enumerate(p) if i == 0 or p[i - 1] != c]
        states = [tuple(p[max(0, i - order + 1):i + 1]) for i in range(len(p))]
        seqs.append((states, conv, val, nulls))
    names = sorted({s for st, *_ in seqs for s in st})
    idx = {s: i + 1 for i, s in enumerate(names)}
    n = len(names) + 1
    W = np.zeros((n, n + 2))  # last two columns: conversion, null
    for st, conv, val, nulls in seqs:
        prev = 0
        for s in st:
            W[prev, idx[s]] += conv + nulls
            prev = idx[s]
        W[prev, n] += conv
        W[prev, n + 1] += nulls
    P = W / W.sum(axis=1, keepdims=True)

    def p_conv(removed):
        keep = [i for i in range(n) if i not in removed]
        Q = P[np.ix_(keep, keep)]
        R = P[keep, n]
        x = np.linalg.solve(np.eye(len(keep)) - Q, R)
        return x[0]

    base = p_conv(set())
    channels = sorted({c for st, *_ in seqs for s in st for c in s})
    re = {c: (1 - p_conv({idx[s] for s in names if c in s}) / base) if base > 0 else 0.0 for c in channels}
    total_conv = sum(c for _, c, _, _ in seqs)
    total_val = sum(v for _, _, v, _ in seqs)
    s = sum(re.values())
    return {c: (re[c], total_conv * re[c] / s, total_val * re[c] / s) for c in channels}, P, names


def load_paths(conn, name, paths):
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{name} (path text, conv bigint, val double precision, nulls bigint)")
        with cur.copy(f"COPY public.{name} FROM STDIN") as cp:
            for p, (c, v, nl) in paths.items():
                cp.write_row((" > ".join(p), c, v, nl))


def test_markov_matches_numpy(server):
    compared = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        for seed in range(4):
            paths = gen_paths(seed)
            load_paths(conn, f"mk{seed}", paths)
            for order, loops in [(1, False), (1, True), (2, False)]:
                want, P, names = numpy_markov(paths, order, loops)
                got = json.loads(conn.execute(
                    f"SELECT markov_attribution(string_to_array(path, ' > '), conv, val, nulls, {order}, {str(loops).lower()}) "
                    f"FROM public.mk{seed}").fetchone()[0])
                assert [g["channel"] for g in got] == sorted(want)
                for g in got:
                    re, conv, val = want[g["channel"]]
                    assert abs(g["removal_effect"] - re) < 1e-9 and abs(g["conversions"] - conv) < 1e-9 * max(1, conv) \
                        and abs(g["value"] - val) < 1e-9 * max(1, val), (seed, order, loops, g, want[g["channel"]])
                compared += len(got)
                matrix = json.loads(conn.execute(
                    f"SELECT markov_transition_matrix(string_to_array(path, ' > '), conv, nulls, {order}, {str(loops).lower()}) "
                    f"FROM public.mk{seed}").fetchone()[0])
                label = ["(start)"] + [" > ".join(s) for s in names] + ["(conversion)", "(null)"]
                ref = {(label[i], label[j]): P[i, j] for i in range(P.shape[0]) for j in range(P.shape[1]) if P[i, j] > 0}
                assert {(m["from"], m["to"]) for m in matrix} == set(ref)
                assert all(abs(m["p"] - ref[(m["from"], m["to"])]) < 1e-12 for m in matrix)
        # Nothing converts: zeros, not NaN.
        got = json.loads(conn.execute("SELECT markov_attribution(p, 0, 0.0, 1) FROM (VALUES (['a', 'b'])) AS v(p)").fetchone()[0])
        assert all(g["removal_effect"] == 0 and g["conversions"] == 0 for g in got)
    print(f"markov_attribution: {compared} channel results compared with numpy over 4 path sets x 3 settings")


def brute_shapley(paths, subset_sum=True, rate=False):
    channels = sorted({c for p in paths for c in p})
    sets = {}
    for p, (c, v, nl) in paths.items():
        k = frozenset(p)
        a = sets.get(k, (0, 0.0, 0))
        sets[k] = (a[0] + c, a[1] + v, a[2] + c + nl)

    def worth(S):
        tot = [0, 0.0, 0]
        for k, (c, v, n) in sets.items():
            if (k <= S) if subset_sum else (k == S):
                tot = [tot[0] + c, tot[1] + v, tot[2] + n]
        if rate:
            return (tot[0] / tot[2], tot[1] / tot[2]) if tot[2] else (0.0, 0.0)
        return (tot[0], tot[1])

    phi = {c: [0.0, 0.0] for c in channels}
    perms = list(itertools.permutations(channels))
    for order in perms:
        S = frozenset()
        prev = worth(S)
        for c in order:
            S = S | {c}
            now = worth(S)
            phi[c][0] += now[0] - prev[0]
            phi[c][1] += now[1] - prev[1]
            prev = now
    return {c: (a / len(perms), b / len(perms)) for c, (a, b) in phi.items()}


def test_shapley_matches_brute_force(server):
    compared = 0
    with psycopg.connect(server.url, autocommit=True) as conn:
        paths = gen_paths(9, n=60)
        load_paths(conn, "sh", paths)
        total_conv = sum(c for c, _, _ in paths.values())
        total_val = sum(v for _, v, _ in paths.values())
        for opts, subset, rate in [("", True, False), ("coalition_value=exact_set", False, False),
                                   ("worth=conversion_rate", True, True),
                                   ("coalition_value=exact_set, worth=conversion_rate", False, True)]:
            want = brute_shapley(paths, subset, rate)
            got = json.loads(conn.execute(
                f"SELECT shapley_attribution(string_to_array(path, ' > '), conv, val, conv + nulls, '{opts}') FROM public.sh"
            ).fetchone()[0])
            # Totals are shared in proportion to the positive values.
            s_conv = sum(max(w[0], 0) for w in want.values())
            s_val = sum(max(w[1], 0) for w in want.values())
            for g in got:
                phi, phi_v = want[g["channel"]]
                assert abs(g["shapley"] - phi) < 1e-9 * max(1, abs(phi)), (opts, g, phi)
                assert abs(g["conversions"] - max(phi, 0) / s_conv * total_conv) < 1e-9 * total_conv, (opts, g)
                assert abs(g["value"] - max(phi_v, 0) / s_val * total_val) < 1e-9 * total_val, (opts, g)
                compared += 1
            if subset and not rate:
                assert abs(sum(g["shapley"] for g in got) - total_conv) < 1e-9
        # Above max_channels: the sampled estimate is close to the exact value.
        want = brute_shapley(paths)
        got = json.loads(conn.execute(
            "SELECT shapley_attribution(string_to_array(path, ' > '), conv, val, conv + nulls, "
            "'max_channels=3, samples=20000, seed=7') FROM public.sh").fetchone()[0])
        for g in got:
            assert abs(g["shapley"] - want[g["channel"]][0]) < 0.02 * total_conv, g
    print(f"shapley_attribution: {compared} channel values compared with an itertools brute force (720 orders)")
