"""A lake on an S3-compatible store (moto's server, started locally): DDL, DML, views,
and a second server on the same bucket."""
import os
import socket
import subprocess
import sys
import time

import boto3
import psycopg
import pytest

from conftest import Server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3():
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([moto, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="lake")
            break
        except Exception:
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    yield env, client
    proc.kill()
    proc.wait()


def test_lake_on_s3_is_shared_by_servers(s3):
    env, client = s3
    a = Server("s3://lake/touchlake", env=env)
    try:
        with psycopg.connect(a.url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA crm")
            conn.execute("CREATE TABLE crm.members (id bigint NOT NULL, phone text)")
            conn.execute("INSERT INTO crm.members VALUES (1, '+8613800000001'), (2, NULL)")
            conn.execute("UPDATE crm.members SET phone = '+8613800000002' WHERE id = 2")
            conn.execute("DELETE FROM crm.members WHERE id = 1")
            conn.execute("CREATE VIEW crm.phones AS SELECT phone FROM crm.members")
            assert conn.execute("SELECT phone FROM crm.phones").fetchall() == [("+8613800000002",)]
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="touchlake/")["Contents"]]
        assert any(k.startswith("touchlake/crm/members/_delta_log/") for k in keys), keys
        assert any(k.startswith("touchlake/_touchlake/views/crm/") for k in keys), keys
        b = Server("s3://lake/touchlake", env=env)
        try:
            with psycopg.connect(b.url, autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM crm.phones").fetchone() == (1,)
                conn.execute("INSERT INTO crm.members VALUES (3, '+8613800000003')")
            with psycopg.connect(a.url, autocommit=True) as conn:
                deadline = time.time() + 10
                while conn.execute("SELECT count(*) FROM crm.members").fetchone() != (2,):
                    assert time.time() < deadline, "server a never saw b's insert"
                    time.sleep(0.2)
        finally:
            b.stop()
    finally:
        a.stop()
