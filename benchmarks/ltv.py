"""Lifetime-value benchmark (issue 6): BG/NBD and Gamma-Gamma maximum-likelihood fits on
--customers simulated customers (default 1,000,000), Touchlake over the wire (psycopg,
`SELECT bgnbd_fit(...)`, `SELECT gamma_gamma_fit(...)`) against lifetimes 0.11.3 on the
same rows in one run, medians of --runs; the fitted parameters are cross-checked.

    ~/.cache/touchlake-ltv-venv/bin/python benchmarks/ltv.py [--customers N] [--runs 3] [--binary PATH] [--write]

Needs the LTV venv (tests/python_ltv/requirements.txt: lifetimes needs numpy < 2).
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter

from common import Touchlake, timed

TRUE = dict(r=0.25, alpha=4.0, a=0.8, b=2.5)
GG = dict(p=6.0, q=3.8, v=15.0)


def simulate(n, seed=1):
    """BG/NBD customers (Fader, Hardie & Lee 2005) observed for T ~ U(1, 52) weeks, with
    Gamma-Gamma spend per repeat purchase."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUE["r"], 1 / TRUE["alpha"], n)
    p = rng.beta(TRUE["a"], TRUE["b"], n)
    T = np.round(rng.uniform(1, 52, n), 2)
    t = np.zeros(n)
    x = np.zeros(n, dtype=np.int64)
    last = np.zeros(n)
    active = np.ones(n, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        t[idx] += rng.exponential(1 / lam[idx])
        within = t[idx] <= T[idx]
        buy = idx[within]
        x[buy] += 1
        last[buy] = t[buy]
        # Each purchase ends the customer with probability p.
        dead = buy[rng.random(buy.size) < p[buy]]
        active[idx[~within]] = False
        active[dead] = False
    nu = rng.gamma(GG["q"], 1 / GG["v"], n)
    m = np.where(x > 0, rng.gamma(GG["p"] * np.maximum(x, 1), 1 / (nu * np.maximum(x, 1))), 0.0)
    return pd.DataFrame({"id": np.arange(n), "frequency": x.astype(float), "recency": np.round(last, 2),
                         "T": T, "monetary": np.round(m, 2)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=os.path.expanduser("~/.cache/touchlake-target/release/touchlake"))
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = ap.parse_args()
    df = simulate(a.customers)
    # The recency of a customer without repeat purchases is 0 (lifetimes' rule).
    df.loc[df.frequency == 0, "recency"] = 0.0
    print(f"{len(df)} customers, {int((df.frequency > 0).sum())} with repeat purchases", file=sys.stderr)
    with tempfile.TemporaryDirectory() as lake, open(os.path.join(lake, "server.log"), "w") as log:
        tl = Touchlake(a.binary, os.path.join(lake, "lake"), log)
        try:
            tl.conn.execute("CREATE TABLE public.rfm (id bigint, frequency double precision, recency double precision, "
                            "t double precision, monetary double precision)")
            with tl.conn.cursor() as cur:
                with cur.copy("COPY public.rfm FROM STDIN") as cp:
                    for row in df.itertuples(index=False):
                        cp.write_row(row)
            bg_sql = "SELECT m['r'], m['alpha'], m['a'], m['b'], m['converged'] FROM (SELECT bgnbd_fit(frequency, recency, t) AS m FROM public.rfm) x"
            gg_sql = "SELECT g['p'], g['q'], g['v'], g['converged'] FROM (SELECT gamma_gamma_fit(frequency, monetary) AS g FROM public.rfm) x"
            ours_bg_t, ours_bg = timed(lambda: tl.conn.execute(bg_sql).fetchone(), a.runs)
            ours_gg_t, ours_gg = timed(lambda: tl.conn.execute(gg_sql).fetchone(), a.runs)
        finally:
            tl.stop()
    lt_bg_t, bgf = timed(lambda: BetaGeoFitter().fit(df.frequency, df.recency, df["T"]), a.runs)
    rep = df[df.frequency > 0]
    lt_gg_t, ggf = timed(lambda: GammaGammaFitter().fit(rep.frequency, rep.monetary), a.runs)
    agree_bg = max(abs(o - bgf.params_[k]) / bgf.params_[k] for o, k in zip(ours_bg[:4], ["r", "alpha", "a", "b"]))
    agree_gg = max(abs(o - ggf.params_[k]) / ggf.params_[k] for o, k in zip(ours_gg[:3], ["p", "q", "v"]))
    rows = [
        ("BG/NBD fit", ours_bg_t, lt_bg_t, agree_bg, ours_bg[4]),
        ("Gamma-Gamma fit", ours_gg_t, lt_gg_t, agree_gg, ours_gg[3]),
    ]
    lines = [
        f"## LTV fits: {a.customers:,} customers ({platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, medians of {a.runs})",
        "",
        "Simulated BG/NBD customers (r=0.25, α=4, a=0.8, b=2.5; T uniform in 1–52 weeks) with "
        "Gamma-Gamma spend. Touchlake: the aggregate over the wire (psycopg, release build); "
        "lifetimes 0.11.3 in-process on the same rows.",
        "",
        "| fit | Touchlake s | lifetimes s | ratio | max relative parameter difference | converged |",
        "|---|---|---|---|---|---|",
    ]
    for name, ours, theirs, agree, ok in rows:
        lines.append(f"| {name} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}× | {agree:.1e} | {ok} |")
    print("\n".join(lines))
    if a.write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        with open(path, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
