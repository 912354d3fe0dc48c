"""TouchBench (issue 5): journey queries over the demo lake's touchpoints, Touchlake over the
wire against ClickHouse (chdb, its native functions), DuckDB (plain SQL) and PostgreSQL
(plain SQL, over the wire, data loaded with COPY), in one run, medians of --runs, answers
cross-checked between the engines.

    python benchmarks/touchbench.py [--sf 1] [--runs 5] [--binary PATH] [--write]

SF1 is 1M touchpoints (the demo generator at ~26,700 persons), SF10 10M. The data is
written once as Delta (Touchlake's demo lake) and once as Parquet (for the peers).
"""
import argparse
import decimal
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import re
import time

import chdb
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from deltalake import DeltaTable

from common import Touchlake, timed

COLUMNS = ["touchpoint_id", "person_id", "occurred_at", "channel", "event_type", "revenue"]
WEEK = 7 * 86400 * 1_000_000

# Each query: {engine: SQL}. `T` is the touchpoints table of the engine; `{person}` is the
# person of Q7.
QUERIES = {}

QUERIES["Q1 PV/UV by channel and day"] = {
    "touchlake": """SELECT channel, CAST(date_trunc('day', occurred_at) AS date) AS day, count(*) AS pv,
        count(DISTINCT person_id) AS uv FROM T WHERE event_type = 'page_view' GROUP BY 1, 2 ORDER BY 1, 2""",
    "chdb": """SELECT channel, toDate(occurred_at) AS day, count() AS pv, uniqExact(person_id) AS uv
        FROM T WHERE event_type = 'page_view' GROUP BY 1, 2 ORDER BY 1, 2""",
    "duckdb": """SELECT channel, CAST(date_trunc('day', occurred_at) AS date) AS day, count(*) AS pv,
        count(DISTINCT person_id) AS uv FROM T WHERE event_type = 'page_view' GROUP BY 1, 2 ORDER BY 1, 2""",
    "postgres": """SELECT channel, CAST(date_trunc('day', occurred_at) AS date) AS day, count(*) AS pv,
        count(DISTINCT person_id) AS uv FROM T WHERE event_type = 'page_view' GROUP BY 1, 2 ORDER BY 1, 2""",
}

STEPS = ["page_view", "click", "add_to_cart", "purchase"]


def funnel_sql(interval, first):
    """Plain-SQL 4-step funnel: for each first step, the earliest next step in the window."""
    s = STEPS
    return f"""WITH e AS (SELECT person_id, occurred_at AS t, event_type AS ev FROM T
                   WHERE event_type IN ('{s[0]}', '{s[1]}', '{s[2]}', '{s[3]}')),
      s1 AS (SELECT person_id, t AS t1 FROM e WHERE ev = '{s[0]}'),
      s2 AS (SELECT s1.person_id, s1.t1, min(e.t) AS t2 FROM s1 JOIN e ON e.person_id = s1.person_id
             AND e.ev = '{s[1]}' AND e.t >= s1.t1 AND e.t <= s1.t1 + {interval} GROUP BY 1, 2),
      s3 AS (SELECT s2.person_id, s2.t1, min(e.t) AS t3 FROM s2 JOIN e ON e.person_id = s2.person_id
             AND e.ev = '{s[2]}' AND e.t >= s2.t2 AND e.t <= s2.t1 + {interval} GROUP BY 1, 2),
      s4 AS (SELECT s3.person_id, s3.t1, min(e.t) AS t4 FROM s3 JOIN e ON e.person_id = s3.person_id
             AND e.ev = '{s[3]}' AND e.t >= s3.t3 AND e.t <= s3.t1 + {interval} GROUP BY 1, 2),
      lvl AS (SELECT s1.person_id, max(CASE WHEN s4.t4 IS NOT NULL THEN 4 WHEN s3.t3 IS NOT NULL THEN 3
                                       WHEN s2.t2 IS NOT NULL THEN 2 ELSE 1 END) AS level
              FROM s1 LEFT JOIN s2 ON s2.person_id = s1.person_id AND s2.t1 = s1.t1
                      LEFT JOIN s3 ON s3.person_id = s1.person_id AND s3.t1 = s1.t1
                      LEFT JOIN s4 ON s4.person_id = s1.person_id AND s4.t1 = s1.t1 GROUP BY 1),
      p AS (SELECT person_id, {first} AS first_channel FROM T GROUP BY person_id)
    SELECT p.first_channel, coalesce(lvl.level, 0) AS level, count(*) AS persons
    FROM p LEFT JOIN lvl ON lvl.person_id = p.person_id GROUP BY 1, 2 ORDER BY 1, 2"""


QUERIES["Q2 4-step funnel in 7 days by first-touch channel"] = {
    "touchlake": f"""SELECT first_channel, level, count(*) AS persons FROM (
        SELECT person_id, first_value(channel ORDER BY occurred_at, channel) AS first_channel,
               window_funnel(INTERVAL '7 days', occurred_at, event_type = '{STEPS[0]}', event_type = '{STEPS[1]}',
                             event_type = '{STEPS[2]}', event_type = '{STEPS[3]}') AS level
        FROM T GROUP BY person_id) f GROUP BY 1, 2 ORDER BY 1, 2""",
    "chdb": f"""SELECT first_channel, level, count() AS persons FROM (
        SELECT person_id, argMin(channel, (occurred_at, channel)) AS first_channel,
               windowFunnel({WEEK})(toUInt64(toUnixTimestamp64Micro(occurred_at)), event_type = '{STEPS[0]}',
                 event_type = '{STEPS[1]}', event_type = '{STEPS[2]}', event_type = '{STEPS[3]}') AS level
        FROM T GROUP BY person_id) GROUP BY 1, 2 ORDER BY 1, 2""",
    "duckdb": funnel_sql("INTERVAL 7 DAY", "arg_min(channel, (occurred_at, channel))"),
    "postgres": funnel_sql("INTERVAL '7 days'", "(array_agg(channel ORDER BY occurred_at, channel))[1]"),
}


def sessions_sql(gap):
    return f"""SELECT count(*) AS sessions, sum(CASE WHEN n = 1 THEN 1 ELSE 0 END) AS bounced,
        round(CAST(sum(CASE WHEN n = 1 THEN 1 ELSE 0 END) AS numeric) / count(*), 4) AS bounce_rate
      FROM (SELECT person_id, s, count(*) AS n FROM (
        SELECT person_id, sum(f) OVER (PARTITION BY person_id ORDER BY occurred_at, touchpoint_id
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS s
        FROM (SELECT person_id, occurred_at, touchpoint_id,
                CASE WHEN occurred_at - lag(occurred_at) OVER (PARTITION BY person_id ORDER BY occurred_at, touchpoint_id)
                          < {gap} THEN 0 ELSE 1 END AS f FROM T) x) y GROUP BY 1, 2) z"""


QUERIES["Q3 sessions and bounce rate"] = {
    "touchlake": """SELECT count(*) AS sessions, sum(CASE WHEN s['events'] = 1 THEN 1 ELSE 0 END) AS bounced,
        round(CAST(sum(CASE WHEN s['events'] = 1 THEN 1 ELSE 0 END) AS numeric) / count(*), 4) AS bounce_rate
      FROM (SELECT unnest(sessions(occurred_at, INTERVAL '30 minutes')) AS s FROM T GROUP BY person_id) y""",
    "chdb": """SELECT count() AS sessions, countIf(length(s) = 1) AS bounced, round(bounced / sessions, 4) AS bounce_rate
      FROM (SELECT arraySort(groupArray(toUnixTimestamp64Micro(occurred_at))) AS ts,
                   arraySplit((x, d) -> d >= 1800000000, ts, arrayDifference(ts)) AS ss
            FROM T GROUP BY person_id) ARRAY JOIN ss AS s""",
    "duckdb": sessions_sql("INTERVAL 30 MINUTE"),
    "postgres": sessions_sql("INTERVAL '30 minutes'"),
}


def paths_sql(agg):
    return f"""WITH o AS (SELECT person_id, channel, event_type,
                  row_number() OVER (PARTITION BY person_id ORDER BY occurred_at, touchpoint_id) AS rn FROM T),
      fp AS (SELECT person_id, min(rn) AS prn FROM o WHERE event_type = 'purchase' GROUP BY 1),
      p AS (SELECT o.person_id, {agg} AS path FROM o JOIN fp ON o.person_id = fp.person_id
            AND o.rn < fp.prn AND o.rn >= fp.prn - 3 GROUP BY 1)
    SELECT path, count(*) AS persons FROM p GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20"""


QUERIES["Q4 top 20 paths before purchase"] = {
    "touchlake": """SELECT array_to_string(p, '>') AS path, count(*) AS persons FROM (
        SELECT paths_to(channel, occurred_at, event_type = 'purchase', 3, touchpoint_id) AS p
        FROM T GROUP BY person_id) x WHERE cardinality(p) > 0 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20""",
    "chdb": """SELECT path, count() AS persons FROM (
        SELECT arraySort(x -> (x.1, x.2), groupArray((occurred_at, touchpoint_id, channel, event_type))) AS a,
               arrayFirstIndex(x -> x.4 = 'purchase', a) AS i,
               arrayStringConcat(arrayMap(x -> x.3, arraySlice(a, greatest(1, i - 3), i - greatest(1, i - 3))), '>') AS path
        FROM T GROUP BY person_id HAVING i > 1) GROUP BY path ORDER BY persons DESC, path LIMIT 20""",
    "duckdb": paths_sql("string_agg(o.channel, '>' ORDER BY o.rn)"),
    "postgres": paths_sql("string_agg(o.channel, '>' ORDER BY o.rn)"),
}


def retention_plain(trunc, plus):
    weeks = ", ".join(f"count(DISTINCT CASE WHEN w.wk = c.cohort + {plus(k)} THEN w.person_id END) AS w{k}"
                      for k in range(5))
    return f"""WITH w AS (SELECT DISTINCT person_id, {trunc} AS wk FROM T),
      c AS (SELECT person_id, min(wk) AS cohort FROM w GROUP BY 1)
    SELECT CAST(c.cohort AS date) AS cohort, {weeks}
    FROM w JOIN c ON c.person_id = w.person_id GROUP BY 1 ORDER BY 1"""


QUERIES["Q5 weekly retention cohorts"] = {
    "touchlake": """SELECT CAST(r['cohort_start'] AS date) AS cohort, sum(r['retained'][1]) AS w0,
           sum(r['retained'][2]) AS w1, sum(r['retained'][3]) AS w2, sum(r['retained'][4]) AS w3,
           sum(r['retained'][5]) AS w4
    FROM (SELECT unnest(retention_vector(occurred_at, true, true, 'week', 5)) AS r FROM T GROUP BY person_id) c
    GROUP BY 1 ORDER BY 1""",
    "chdb": """WITH c AS (SELECT person_id, min(toMonday(occurred_at)) AS cohort FROM T GROUP BY person_id)
    SELECT cohort, sum(r[1]) AS w0, sum(r[2]) AS w1, sum(r[3]) AS w2, sum(r[4]) AS w3, sum(r[5]) AS w4 FROM (
      SELECT c.cohort AS cohort, retention(toMonday(T.occurred_at) = c.cohort,
             toMonday(T.occurred_at) = c.cohort + 7, toMonday(T.occurred_at) = c.cohort + 14,
             toMonday(T.occurred_at) = c.cohort + 21, toMonday(T.occurred_at) = c.cohort + 28) AS r
      FROM T JOIN c ON c.person_id = T.person_id GROUP BY T.person_id, c.cohort) GROUP BY cohort ORDER BY cohort""",
    "duckdb": retention_plain("date_trunc('week', occurred_at)", lambda k: f"INTERVAL {7 * k} DAY"),
    "postgres": retention_plain("date_trunc('week', occurred_at)", lambda k: f"INTERVAL '{7 * k} days'"),
}

SEQ = ["event_type = 'message_click'", "event_type = 'add_to_cart'", "event_type = 'purchase'"]


def sequence_plain():
    return f"""WITH a AS (SELECT person_id, min(occurred_at) AS t1 FROM T WHERE {SEQ[0]} GROUP BY 1),
      b AS (SELECT a.person_id, min(t.occurred_at) AS t2 FROM a JOIN T t ON t.person_id = a.person_id
            AND t.{SEQ[1]} AND t.occurred_at >= a.t1 GROUP BY 1),
      c AS (SELECT b.person_id FROM b JOIN T t ON t.person_id = b.person_id
            AND t.{SEQ[2]} AND t.occurred_at >= b.t2 GROUP BY 1)
    SELECT count(*) AS persons FROM c"""


QUERIES["Q6 sequence match"] = {
    "touchlake": f"""SELECT count(*) AS persons FROM (
        SELECT person_id, sequence_match('(?1).*(?2).*(?3)', occurred_at, {', '.join(SEQ)}) AS m
        FROM T GROUP BY person_id) s WHERE m""",
    "chdb": f"""SELECT count() AS persons FROM (
        SELECT person_id, sequenceMatch('(?1).*(?2).*(?3)')(toUInt64(toUnixTimestamp64Micro(occurred_at)),
               {', '.join(SEQ)}) AS m FROM T GROUP BY person_id) WHERE m""",
    "duckdb": sequence_plain(),
    "postgres": sequence_plain(),
}

def attribution_plain(interval):
    """Linear attribution in plain SQL: each eligible touch gets 1 / (touches of its purchase)."""
    return f"""WITH p AS (SELECT touchpoint_id AS cid, person_id, occurred_at AS ct FROM T WHERE event_type = 'purchase'),
      tt AS (SELECT p.cid, t.channel FROM p JOIN (SELECT person_id, channel, occurred_at FROM T) AS t
             ON t.person_id = p.person_id
             WHERE t.occurred_at <= p.ct AND t.occurred_at >= p.ct - {interval}),
      n AS (SELECT cid, count(*) AS n FROM tt GROUP BY cid)
    SELECT tt.channel, sum(1.0 / n.n) AS conversions FROM tt JOIN n ON n.cid = tt.cid GROUP BY 1 ORDER BY 1"""


QUERIES["Q8 linear attribution of purchases (30 days)"] = {
    "touchlake": """WITH p AS (SELECT touchpoint_id AS cid, person_id, occurred_at AS ct FROM T WHERE event_type = 'purchase'),
      w AS (SELECT p.cid, attribution_weights('linear', t.channel, t.occurred_at, p.ct) AS credit
            FROM p JOIN T t ON t.person_id = p.person_id
            WHERE t.occurred_at <= p.ct AND t.occurred_at >= p.ct - INTERVAL '30 days' GROUP BY p.cid)
    SELECT e['channel'] AS channel, sum(e['weight']) AS conversions FROM (SELECT unnest(credit) AS e FROM w) x
    GROUP BY 1 ORDER BY 1""",
    "chdb": attribution_plain("INTERVAL 30 DAY"),
    "duckdb": attribution_plain("INTERVAL 30 DAY"),
    "postgres": attribution_plain("INTERVAL '30 days'"),
}

Q7 = """SELECT occurred_at, channel, event_type, touchpoint_id FROM T WHERE person_id = '{person}'
    ORDER BY occurred_at, touchpoint_id"""
QUERIES["Q7 one person's journey"] = {e: Q7 for e in ["touchlake", "chdb", "duckdb", "postgres"]}

# Touchpoints of resolved persons only (a NULL person is not a person; plain-SQL joins drop
# it while GROUP BY keeps it as a group): a view in Touchlake, filtered rows for the peers.
TABLES = {"touchlake": "bench.touchpoints", "duckdb": "tp", "postgres": "tp"}


def norm(rows):
    """Rows as comparable tuples: numbers rounded, times as UTC microseconds, text as is."""
    out = []
    for r in rows:
        t = []
        for v in r:
            if isinstance(v, datetime.datetime):
                if v.tzinfo is None:
                    v = v.replace(tzinfo=datetime.timezone.utc)
                t.append(int(v.timestamp() * 1_000_000))
            elif isinstance(v, datetime.date):
                t.append(v.isoformat())
            elif isinstance(v, (float, decimal.Decimal)):
                t.append(round(float(v), 4))
            elif isinstance(v, bool):
                t.append(int(v))
            elif isinstance(v, int):
                t.append(v)
            else:
                t.append(str(v))
        out.append(tuple(t))
    return out


class Postgres:
    """A throwaway PostgreSQL cluster (Debian package `postgresql`)."""

    def __init__(self, work):
        bins = [os.path.join("/usr/lib/postgresql", v, "bin") for v in sorted(os.listdir("/usr/lib/postgresql"))]
        self.bin = next(b for b in bins if os.path.exists(os.path.join(b, "initdb")))
        # Its own folder under the system temp dir: the postgres user cannot enter `work`.
        self.dir = tempfile.mkdtemp(prefix="touchbench-pg-")
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres")
        data = os.path.join(self.dir, "data")
        self._as_owner([os.path.join(self.bin, "initdb"), "-A", "trust", "-U", "postgres", "-D", data])
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c shared_buffers=2GB "
                "-c work_mem=256MB -c max_parallel_workers_per_gather=2")
        self._as_owner([os.path.join(self.bin, "pg_ctl"), "-D", data, "-w", "-o", opts,
                        "-l", os.path.join(self.dir, "log"), "start"])
        self.data = data
        self.conn = psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                                    autocommit=True)
        self.conn.execute("SET TimeZone = 'UTC'")

    def _as_owner(self, cmd):
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, capture_output=True)

    def load(self, table):
        self.conn.execute("""CREATE TABLE tp (touchpoint_id text, person_id text, occurred_at timestamptz,
                             channel text, event_type text, revenue numeric(18,2))""")
        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
        data = buf.getvalue().to_pybytes()
        with self.conn.cursor() as cur:
            with cur.copy("COPY tp FROM STDIN (FORMAT csv)") as cp:
                for i in range(0, len(data), 1 << 20):
                    cp.write(data[i:i + (1 << 20)])
        self.conn.execute("CREATE INDEX ON tp (person_id)")
        self.conn.execute("VACUUM ANALYZE tp")

    def run(self, sql):
        return self.conn.execute(sql).fetchall()

    def stop(self):
        self.conn.close()
        self._as_owner([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", type=float, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--binary", default=os.path.expanduser("~/.cache/touchlake-target/release/touchlake"))
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--only", default="", help="comma-separated query prefixes (Q1,Q2,…)")
    a = ap.parse_args()
    persons = int(a.sf * 1_000_000 / 37.4)  # the demo writes ≈ 37.4 touchpoints per person
    with tempfile.TemporaryDirectory() as work:
        lake = os.path.join(work, "lake")
        t = time.perf_counter()
        subprocess.run([a.binary, "demo", "--persons", str(persons), "--no-serve", "--lake", lake],
                       check=True, capture_output=True)
        print(f"demo lake: {persons:,} persons in {time.perf_counter() - t:.1f}s", flush=True)
        table = DeltaTable(os.path.join(lake, "unified", "touchpoints")).to_pyarrow_table(columns=COLUMNS)
        table = table.filter(pa.compute.is_valid(table["person_id"]))
        parquet = os.path.join(work, "touchpoints.parquet")
        pq.write_table(table, parquet)
        print(f"{table.num_rows:,} touchpoints written as Delta and Parquet", flush=True)
        person = table.group_by("person_id").aggregate([("touchpoint_id", "count")]).sort_by(
            [("touchpoint_id_count", "descending"), ("person_id", "ascending")])["person_id"][0].as_py()

        duck = duckdb.connect()
        duck.execute("SET TimeZone = 'UTC'")
        duck.execute(f"CREATE VIEW tp AS SELECT * FROM read_parquet('{parquet}')")
        chdb_sess = chdb.session.Session()
        log = open(os.path.join(tempfile.gettempdir(), "touchbench-touchlake.log"), "a")
        tl = Touchlake(a.binary, lake, log)
        tl.run("CREATE SCHEMA IF NOT EXISTS bench")
        tl.run("CREATE OR REPLACE VIEW bench.touchpoints AS SELECT * FROM unified.touchpoints "
               "WHERE person_id IS NOT NULL")
        t = time.perf_counter()
        pg = Postgres(work)
        pg.load(table)
        print(f"PostgreSQL loaded with COPY in {time.perf_counter() - t:.1f}s", flush=True)

        def ch_run(sql):
            return chdb_sess.query(sql, "ArrowTable").to_pylist()

        results = []
        try:
            for name, sqls in QUERIES.items():
                if a.only and not any(name.startswith(p) for p in a.only.split(",")):
                    continue
                answers, times = {}, {}
                for engine, sql in sqls.items():
                    sql = sql.format(person=person)
                    if engine == "chdb":
                        q = re.sub(r"\b(FROM|JOIN) T\b", rf"\1 file('{parquet}') AS T", sql)
                        fn = (lambda q=q: [tuple(r.values()) for r in ch_run(q)])
                    elif engine == "duckdb":
                        q = replace_table(sql, "tp")
                        fn = (lambda q=q: duck.execute(q).fetchall())
                    elif engine == "postgres":
                        q = replace_table(sql, "tp")
                        fn = (lambda q=q: pg.run(q))
                    else:
                        q = replace_table(sql, TABLES["touchlake"])
                        fn = (lambda q=q: tl.run(q))
                    try:
                        med, rows = timed(fn, a.runs)
                    except Exception as e:  # noqa: BLE001 — report and go on with the others
                        print(f"{name} {engine}: failed: {str(e).splitlines()[0][:200]}", flush=True)
                        continue
                    answers[engine], times[engine] = norm(rows), med
                    print(f"{name:50} {engine:10} median {med:8.3f}s  {len(rows)} rows", flush=True)
                ref = answers.get("duckdb")
                agree = {e: (ans == ref) for e, ans in answers.items()}
                for e, ok in agree.items():
                    if not ok:
                        print(f"  answers differ: {e} vs duckdb: {ans_diff(answers[e], ref)}", flush=True)
                results.append((name, times, agree))
        finally:
            tl.stop()
            pg.stop()
        if a.write:
            write_results(a, results, table.num_rows)


def replace_table(sql, table):
    return re.sub(r"\bT\b", table, sql)


def ans_diff(a, b):
    if b is None:
        return "no reference"
    only_a = [r for r in a if r not in b][:3]
    only_b = [r for r in b if r not in a][:3]
    return f"{len(a)} vs {len(b)} rows; ours-only {only_a}; ref-only {only_b}"


def write_results(a, results, rows):
    cpu = platform.processor() or platform.machine()
    lines = [f"## TouchBench SF{a.sf:g} ({rows:,} touchpoints, median of {a.runs}, {os.cpu_count()} cores, {cpu})",
             "", "Touchlake and PostgreSQL over the wire with psycopg (result transfer included); chdb and "
             "DuckDB in process on the same data as Parquet. Ratio = Touchlake ÷ engine (below 1: Touchlake "
             "faster). Answers are compared with DuckDB's.", "",
             "| query | touchlake s | chdb s | duckdb s | postgres s | ÷ fastest peer | ÷ duckdb | answers agree |",
             "|---|---|---|---|---|---|---|---|"]
    for name, times, agree in results:
        tl = times.get("touchlake")
        peers = [times[e] for e in ("chdb", "duckdb", "postgres") if e in times]
        fastest = min(peers) if peers else None
        cell = lambda e: f"{times[e]:.3f}" if e in times else "failed"
        ratio = lambda x: f"{tl / x:.2f}×" if tl and x else "—"
        ok = ", ".join(e for e, v in agree.items() if not v) or "all"
        lines.append(f"| {name} | {cell('touchlake')} | {cell('chdb')} | {cell('duckdb')} | {cell('postgres')} "
                     f"| {ratio(fastest)} | {ratio(times.get('duckdb'))} | {'yes' if ok == 'all' else 'no: ' + ok} |")
    with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as f:
        f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    sys.exit(main())
