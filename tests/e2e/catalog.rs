//! The catalog over Delta: DDL and DML as Delta commits, persistence, several servers on
//! one lake, time travel.

use std::time::Duration;

use touchlake_tests::Server;

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test]
async fn ddl_and_dml_are_delta_commits() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute(
        "CREATE SCHEMA crm;
         CREATE TABLE crm.members (id bigint NOT NULL, phone text, points int);
         INSERT INTO crm.members VALUES (1, '+8613800000001', 10), (2, '+8613800000002', 20), (3, NULL, 30);",
    )
    .await
    .unwrap();
    assert!(
        dir.path()
            .join("crm/members/_delta_log/00000000000000000001.json")
            .exists()
    );
    let updated = c
        .execute(
            "UPDATE crm.members SET points = points + 1 WHERE id >= 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated, 2);
    let deleted = c
        .execute("DELETE FROM crm.members WHERE phone IS NULL", &[])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        count(&c, "SELECT sum(points)::bigint FROM crm.members").await,
        31
    );
    // CTAS, views, drops.
    c.batch_execute("CREATE TABLE crm.top AS SELECT id, points FROM crm.members WHERE points > 15")
        .await
        .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM crm.top").await, 1);
    // CTAS is one commit, and its columns are nullable as in PostgreSQL.
    let log = dir.path().join("crm/top/_delta_log");
    assert!(log.join("00000000000000000000.json").exists());
    assert!(!log.join("00000000000000000001.json").exists());
    c.batch_execute("INSERT INTO crm.top VALUES (NULL, NULL)")
        .await
        .unwrap();
    // A CTAS whose query fails leaves no table behind.
    let e = c
        .batch_execute(
            "CREATE TABLE crm.boom AS SELECT 1 / (points - points) AS x FROM crm.members",
        )
        .await
        .unwrap_err();
    assert!(e.code().is_some());
    let e = c.batch_execute("SELECT * FROM crm.boom").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01");
    // NOT NULL is enforced.
    let e = c
        .batch_execute("INSERT INTO crm.members VALUES (NULL, 'x', 1)")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "23502");
    c.batch_execute("CREATE VIEW crm.v AS SELECT id FROM crm.members")
        .await
        .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM crm.v").await, 2);
    c.batch_execute("CREATE OR REPLACE VIEW crm.v AS SELECT id FROM crm.members WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM crm.v").await, 1);
    let e = c
        .batch_execute("CREATE VIEW crm.v AS SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P07");
    c.batch_execute("DROP VIEW crm.v; DROP TABLE crm.top")
        .await
        .unwrap();
    let e = c.batch_execute("SELECT * FROM crm.top").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01");
    let e = c.batch_execute("DROP SCHEMA crm").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "2BP01");
    c.batch_execute("DROP SCHEMA crm CASCADE").await.unwrap();
    assert!(!dir.path().join("crm/members").exists());
}

#[tokio::test]
async fn time_travel_reads_earlier_versions() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute("CREATE TABLE t (a int)").await.unwrap(); // v0
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap(); // v1
    c.batch_execute("INSERT INTO t VALUES (2), (3)")
        .await
        .unwrap(); // v2
    c.batch_execute("DELETE FROM t WHERE a = 1").await.unwrap(); // v3
    assert_eq!(count(&c, "SELECT count(*) FROM t").await, 2);
    assert_eq!(count(&c, "SELECT count(*) FROM public.\"t@v0\"").await, 0);
    assert_eq!(count(&c, "SELECT count(*) FROM public.\"t@v1\"").await, 1);
    assert_eq!(count(&c, "SELECT count(*) FROM \"t@v2\"").await, 3);
    let e = c
        .batch_execute("SELECT * FROM \"t@v99\"")
        .await
        .unwrap_err();
    assert!(e.code().is_some());
}

#[tokio::test]
async fn the_catalog_survives_restart_and_is_shared_by_servers() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(dir.path());
    let b = Server::start(dir.path());
    let ca = a.connect().await;
    ca.batch_execute(
        "CREATE SCHEMA marts; CREATE TABLE marts.daily (day date, n bigint);
         INSERT INTO marts.daily VALUES ('2026-01-01', 5);
         CREATE VIEW marts.recent AS SELECT * FROM marts.daily WHERE n > 1",
    )
    .await
    .unwrap();
    let cb = b.connect().await;
    // Server b sees a's table and view (views are read from the lake on refresh).
    let mut seen = 0;
    for _ in 0..50 {
        if let Ok(r) = cb.query_one("SELECT count(*) FROM marts.recent", &[]).await {
            seen = r.get::<_, i64>(0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1);
    // Appends by a are seen by b without a restart.
    ca.batch_execute("INSERT INTO marts.daily VALUES ('2026-01-02', 7)")
        .await
        .unwrap();
    let mut n = 0;
    for _ in 0..50 {
        n = count(&cb, "SELECT count(*) FROM marts.daily").await;
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 2);
    drop((ca, cb));
    a.stop();
    b.stop();
    let c2 = Server::start(dir.path());
    let c = c2.connect().await;
    assert_eq!(count(&c, "SELECT count(*) FROM marts.recent").await, 2);
    let rows = c
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'marts' ORDER BY 1", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["daily", "recent"]);
}

#[tokio::test]
async fn correlated_subqueries_answer_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute(
        "CREATE TABLE p (id int, name text); INSERT INTO p VALUES (1, 'a'), (2, 'b');
         CREATE TABLE t (pid int); INSERT INTO t VALUES (1), (2), (2), (3)",
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT t.pid, (SELECT p.name FROM p WHERE p.id = t.pid) AS name FROM t ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            (1, Some("a".into())),
            (2, Some("b".into())),
            (2, Some("b".into())),
            (3, None)
        ]
    );
}

#[tokio::test]
async fn oids_agree_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let a = srv.connect().await;
    a.batch_execute(
        "CREATE SCHEMA s; CREATE TABLE s.x (a int); CREATE TABLE s.y (b numeric(10,3))",
    )
    .await
    .unwrap();
    let b = srv.connect().await;
    let q = "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 's' AND c.relname = 'y'";
    // b looks first at pg_namespace, a at pg_class: the OIDs must still agree.
    let _ = b
        .query("SELECT oid FROM pg_catalog.pg_namespace", &[])
        .await
        .unwrap();
    let oid_a: u32 = a.query_one(q, &[]).await.unwrap().get(0);
    let oid_b: u32 = b.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(oid_a, oid_b);
    // A cast OID is an ordinary int8 on the wire.
    let as_i64: i64 = a
        .query_one(
            &q.replace("SELECT c.oid FROM", "SELECT c.oid::bigint FROM"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(as_i64, oid_a as i64);
    let typmod: i32 = b
        .query_one(&format!("SELECT atttypmod FROM pg_catalog.pg_attribute WHERE attrelid = {oid_a} AND attname = 'b'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(typmod, (10 << 16 | 3) + 4);
}

#[tokio::test]
async fn oids_survive_restart_and_new_tables() {
    let dir = tempfile::tempdir().unwrap();
    let q = "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 's' AND c.relname = 'b'";
    let first: u32 = {
        let srv = Server::start(dir.path());
        let c = srv.connect().await;
        c.batch_execute("CREATE SCHEMA s; CREATE TABLE s.b (x int)")
            .await
            .unwrap();
        c.query_one(q, &[]).await.unwrap().get(0)
    };
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    // A new schema and table that sort before s.b must not move its OID.
    c.batch_execute("CREATE SCHEMA a; CREATE TABLE a.a (x int); CREATE TABLE s.a (x int)")
        .await
        .unwrap();
    let again: u32 = c.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(first, again);
    // The OID joins back: pg_attribute rows for it name b's column.
    let col: String = c
        .query_one(&format!("SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = {first} AND attnum = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(col, "x");
}

/// PostgreSQL reads `2026-03-01 13:00` as a timestamp (no seconds): in casts, typed
/// literals, INSERT, comparisons and COPY.
#[tokio::test]
async fn timestamps_without_seconds_are_read_as_postgres_does() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    let same: bool = c
        .query_one(
            "SELECT '2026-03-01 13:00'::timestamp = TIMESTAMP '2026-03-01 13:00:00' \
             AND timestamptz '2026-03-01 13:00+08' = TIMESTAMPTZ '2026-03-01 05:00:00+00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same);
    c.batch_execute(
        "CREATE TABLE public.visits (id bigint, at timestamp); \
         INSERT INTO public.visits VALUES (1, '2026-03-01 13:00'), (2, '2026-03-01T14:30');",
    )
    .await
    .unwrap();
    let sink = c
        .copy_in("COPY public.visits (id, at) FROM STDIN (FORMAT csv)")
        .await
        .expect("copy_in");
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"3,2026-03-01 15:45\n"))
        .await
        .expect("send");
    sink.as_mut().finish().await.expect("finish");
    let rows = c
        .query(
            "SELECT id, CAST(date_part('hour', at) * 100 + date_part('minute', at) AS bigint) FROM public.visits \
             WHERE at >= '2026-03-01 13:00' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, 1300), (2, 1430), (3, 1545)]);
    // Text that is not a time still fails, with PostgreSQL's code, and the session goes on.
    let e = c
        .query_one("SELECT '2026-03-01 1x:00'::timestamp", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22P02"), "{e}");
    assert_eq!(count(&c, "SELECT count(*) FROM public.visits").await, 3);
}
