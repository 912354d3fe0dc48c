"""Ingest benchmark (issue 3): CSV and NDJSON → unified.touchpoints (parsed, normalized,
validated, deduplicated, committed to Delta) with `touchlake ingest`, and in the same run
DuckDB `COPY (SELECT … FROM read_csv/read_json) TO parquet` with the same transforms in
SQL, and Python deltalake `write_deltalake` of the files read by pyarrow. Medians of
--runs runs; writes a section of benchmarks/RESULTS.md.

    python benchmarks/ingest.py [--rows 10000000] [--runs 3] [--binary PATH] [--write]
"""
import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time

import duckdb
import pyarrow.csv as pacsv
import pyarrow.json as pajson
from deltalake import write_deltalake

POS = """name = "pos"
kind = "files"
channel = "store_pos"
channel_type = "offline"
path = "{root}/pos/*.csv"
natural_key = ["order_id"]
currency = "CNY"
[format]
timezone = "Asia/Shanghai"
[mapping]
occurred_at = "paid_at"
event_type = "CASE status WHEN 'paid' THEN 'purchase' WHEN 'refund' THEN 'refund' END"
phone = "phone_e164(mobile, 'CN')"
revenue = "replace(amount, ',', '')::decimal(18,2)"
store_id = "store"
[[rules]]
column = "event_type"
not_null = true
"""

WEB = """name = "web"
kind = "files"
channel = "web"
channel_type = "online"
path = "{root}/web/*.ndjson"
natural_key = ["event_id"]
[format]
type = "ndjson"
[mapping]
occurred_at = "ts"
event_type = "event"
anonymous_id = "id_clean('anonymous_id', cookie)"
email = "email_canonical(email)"
revenue = "CAST(value AS decimal(18,2))"
"""


def generate(root, rows, files=10):
    rng = random.Random(1)
    os.makedirs(f"{root}/pos")
    os.makedirs(f"{root}/web")
    per = rows // files
    for f in range(files):
        with open(f"{root}/pos/{f:03}.csv", "w") as out:
            out.write("order_id,paid_at,status,mobile,amount,store\n")
            for i in range(per):
                n = f * per + i
                mobile = f"138{n % 100000000:08d}"
                mobile = (mobile, f"+86 {mobile}", f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}")[n % 3]
                amount = rng.randint(100, 500000)
                amt = f"\"{amount // 100:,}.{amount % 100:02d}\""
                out.write(f"o{n},2026-03-{1 + n % 28:02d} {n % 24:02d}:{n % 60:02d}:00,"
                          f"{'refund' if n % 17 == 0 else 'paid'},{mobile},{amt},s{n % 40}\n")
        with open(f"{root}/web/{f:03}.ndjson", "w") as out:
            for i in range(per):
                n = f * per + i
                email = f',"email":" User{n % 5000}@Example.com "' if n % 4 == 0 else ""
                value = f',"value":"{n % 1000}.50"' if n % 10 == 0 else ""
                out.write(f'{{"event_id":"e{n}","ts":"2026-03-{1 + n % 28:02d}T{n % 24:02d}:00:00+08:00",'
                          f'"event":"page_view","cookie":"ck{n % 100000}"{email}{value}}}\n')


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def touchlake(binary, root, work, name):
    lake = f"{work}/lake-{name}"
    srcdir = f"{work}/sources-{name}"
    shutil.rmtree(lake, ignore_errors=True)
    shutil.rmtree(srcdir, ignore_errors=True)
    os.makedirs(srcdir)
    with open(f"{srcdir}/{name}.toml", "w") as f:
        f.write((POS if name == "pos" else WEB).format(root=root))
    out = subprocess.run([binary, "ingest", "--lake", lake, "--sources", srcdir, name],
                         capture_output=True, text=True, check=True)
    if "succeeded" not in out.stdout:
        raise RuntimeError(f"touchlake ingest did not succeed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def duckdb_pos(root, work):
    duckdb.sql(f"""COPY (SELECT substr(sha256('pos' || chr(31) || order_id), 1, 32) AS touchpoint_id,
        timezone('UTC', strptime(paid_at, '%Y-%m-%d %H:%M:%S')::timestamp AT TIME ZONE 'Asia/Shanghai') AS occurred_at,
        CASE status WHEN 'paid' THEN 'purchase' WHEN 'refund' THEN 'refund' END AS event_type,
        '+86' || regexp_replace(regexp_replace(mobile, '[^0-9]', '', 'g'), '^86', '') AS phone,
        TRY_CAST(replace(amount, ',', '') AS DECIMAL(18,2)) AS revenue, store AS store_id
        FROM read_csv('{root}/pos/*.csv', all_varchar = true)) TO '{work}/duck-pos.parquet'""")


def duckdb_web(root, work):
    duckdb.sql(f"""COPY (SELECT substr(sha256('web' || chr(31) || event_id), 1, 32) AS touchpoint_id,
        ts::timestamptz AS occurred_at, event AS event_type, nullif(cookie, 'anonymous') AS anonymous_id,
        lower(trim(email)) AS email, TRY_CAST(value AS DECIMAL(18,2)) AS revenue
        FROM read_json('{root}/web/*.ndjson', format = 'newline_delimited', columns = {{event_id: 'VARCHAR', ts: 'VARCHAR', event: 'VARCHAR', cookie: 'VARCHAR', email: 'VARCHAR', value: 'VARCHAR'}}))
        TO '{work}/duck-web.parquet'""")


def deltalake_write(root, work, name):
    target = f"{work}/py-{name}"
    shutil.rmtree(target, ignore_errors=True)
    for f in sorted(os.listdir(f"{root}/{name}")):
        path = f"{root}/{name}/{f}"
        table = pacsv.read_csv(path) if name == "pos" else pajson.read_json(path)
        write_deltalake(target, table, mode="append")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=os.path.expanduser("~/.cache/touchlake-target/release/touchlake"))
    ap.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = f"{work}/data"
        generate(root, a.rows)
        results = []
        for name in ["pos", "web"]:
            engines = {
                "touchlake ingest": lambda: touchlake(a.binary, root, work, name),
                "duckdb COPY → parquet": lambda: (duckdb_pos if name == "pos" else duckdb_web)(root, work),
                "python deltalake write": lambda: deltalake_write(root, work, name),
            }
            for engine, fn in engines.items():
                times = [timed(fn) for _ in range(a.runs)]
                med = statistics.median(times)
                results.append((name, engine, med, a.rows / med))
                print(f"{name:4} {engine:24} median {med:7.2f}s  {a.rows / med:12,.0f} rows/s", flush=True)
    if a.write:
        cpu = platform.processor() or platform.machine()
        lines = [f"## Ingest ({a.rows:,} rows per format, median of {a.runs}, {os.cpu_count()} cores, {cpu})", "",
                 "| format | engine | median s | rows/s | vs touchlake |", "|---|---|---|---|---|"]
        for name in ["pos", "web"]:
            base = next(r[2] for r in results if r[0] == name and r[1] == "touchlake ingest")
            for n, e, med, rps in results:
                if n == name:
                    lines.append(f"| {'CSV' if n == 'pos' else 'NDJSON'} | {e} | {med:.2f} | {rps:,.0f} | {med / base:.2f}× |")
        with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
