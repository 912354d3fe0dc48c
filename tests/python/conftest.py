"""Starts the real touchlake binary on a temporary lake for the Python client tests."""
import os
import subprocess
import tempfile
import threading

import pytest


class Server:
    def __init__(self, lake, args=("serve",), env=None, log=None):
        binary = os.environ.get("TOUCHLAKE_BIN", os.path.expanduser("~/.cache/touchlake-target/debug/touchlake"))
        env = dict(os.environ, TOUCHLAKE_REFRESH_SECONDS="0.2", **(env or {}))
        self.lake = lake
        # `log`: a file to write the server's log (stderr) to.
        self.proc = subprocess.Popen(
            [binary, *args, "--lake", lake, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL, text=True, env=env,
        )
        found = threading.Event()
        self.addr = None

        def read():
            for line in self.proc.stdout:
                if line.startswith("touchlake listening on "):
                    self.addr = line.split()[3]
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120):
            self.proc.kill()
            raise RuntimeError("touchlake did not start")
        self.host, port = self.addr.rsplit(":", 1)
        self.port = int(port)
        self.url = f"postgresql://touchlake@{self.addr}/touchlake"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server():
    with tempfile.TemporaryDirectory() as lake:
        s = Server(lake)
        yield s
        s.stop()


# A `COPY` source of pings (`id`, `at`): each id an anonymous person's touchpoint.
PINGS_SOURCE = (
    "CREATE SOURCE pings WITH (kind = 'copy', channel = 'app', channel_type = 'online', "
    "natural_key = ARRAY['id'], mapping.occurred_at = 'at', mapping.event_type = '''ping''', "
    "mapping.anonymous_id = 'id')")


def copy_pings(conn, ids):
    """COPY one ping per id into the pings source; its ingest run's (read, accepted, duplicate)."""
    with conn.cursor() as cur:
        with cur.copy("COPY sources.pings (id, at) FROM STDIN (FORMAT csv)") as copy:
            copy.write("".join(f"{i},2026-01-01T00:00:{n % 60:02d}Z\n" for n, i in enumerate(ids)))
    return conn.execute(
        "SELECT rows_read, rows_accepted, rows_duplicate FROM quality.ingest_runs "
        "WHERE source = 'pings' ORDER BY started_at DESC LIMIT 1").fetchone()
