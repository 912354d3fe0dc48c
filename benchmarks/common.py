"""What the benchmark scripts share: the touchlake server over the wire, and timing."""
import statistics
import subprocess
import time

import psycopg


class Touchlake:
    """`touchlake serve` on a lake, on an ephemeral port, with one autocommit connection."""

    def __init__(self, binary, lake, log):
        self.proc = subprocess.Popen([binary, "serve", "--lake", lake, "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        for line in self.proc.stdout:
            if line.startswith("touchlake listening on "):
                self.url = f"postgresql://touchlake@{line.split()[3]}/touchlake"
                break
        else:
            raise RuntimeError("touchlake did not start")
        self.conn = psycopg.connect(self.url, autocommit=True)

    def run(self, sql):
        cur = self.conn.execute(sql)
        return cur.fetchall() if cur.description else []

    def stop(self):
        self.conn.close()
        self.proc.kill()
        self.proc.wait()


def timed(fn, runs):
    """(median seconds of `runs` calls, the last result)."""
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result
