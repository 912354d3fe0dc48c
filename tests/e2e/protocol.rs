//! The wire protocol through tokio-postgres: simple and extended queries, types,
//! parameters, binary results, errors and SQLSTATEs, sessions, transactions, cancel.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use tokio_postgres::SimpleQueryMessage;
use touchlake_tests::Server;

fn lake() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

async fn sqlstate(c: &tokio_postgres::Client, sql: &str) -> String {
    let err = c.simple_query(sql).await.expect_err(sql);
    err.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no code: {err}"))
}

#[tokio::test]
async fn server_identity_functions() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    let row = c
        .query_one(
            "SELECT version(), current_database(), current_schema(), current_user",
            &[],
        )
        .await
        .unwrap();
    let version: String = row.get(0);
    assert!(
        version.starts_with("PostgreSQL 15.0 (Touchlake "),
        "{version}"
    );
    assert_eq!(row.get::<_, String>(1), "touchlake");
    assert_eq!(row.get::<_, String>(2), "public");
    assert_eq!(row.get::<_, String>(3), "touchlake");
    let v = c.simple_query("SHOW server_version").await.unwrap();
    let SimpleQueryMessage::Row(r) = &v[1] else {
        panic!("no row")
    };
    assert_eq!(r.get(0), Some("15.0"));
}

#[tokio::test]
async fn every_type_round_trips_text_and_binary() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute(
        "CREATE TABLE public.t (id bigint NOT NULL, i int, name text, amount numeric(18,2), ok boolean, \
         d date, ts timestamp, tz timestamptz, f double precision)",
    )
    .await
    .unwrap();
    let ts = NaiveDate::from_ymd_opt(2026, 3, 4)
        .unwrap()
        .and_hms_micro_opt(5, 6, 7, 123_456)
        .unwrap();
    let tz = Utc.with_ymd_and_hms(2026, 5, 6, 7, 8, 9).unwrap();
    let n = c
        .execute(
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &1i64,
                &42i32,
                &"héllo, 世界",
                &Decimal::new(123_456, 2),
                &true,
                &NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
                &ts,
                &tz,
                &2.5f64,
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.batch_execute("INSERT INTO t (id) VALUES (2)")
        .await
        .unwrap();
    // Binary results (tokio-postgres asks for binary in the extended protocol).
    let rows = c
        .query(
            "SELECT id, i, name, amount, ok, d, ts, tz, f FROM t ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(r.get::<_, i64>(0), 1);
    assert_eq!(r.get::<_, i32>(1), 42);
    assert_eq!(r.get::<_, String>(2), "héllo, 世界");
    assert_eq!(r.get::<_, Decimal>(3), Decimal::new(123_456, 2));
    assert!(r.get::<_, bool>(4));
    assert_eq!(
        r.get::<_, NaiveDate>(5),
        NaiveDate::from_ymd_opt(2026, 1, 2).unwrap()
    );
    assert_eq!(r.get::<_, NaiveDateTime>(6), ts);
    assert_eq!(r.get::<_, chrono::DateTime<Utc>>(7), tz);
    assert_eq!(r.get::<_, f64>(8), 2.5);
    assert_eq!(rows[1].get::<_, Option<String>>(2), None);
    assert_eq!(rows[1].get::<_, Option<Decimal>>(3), None);
    // Text results (simple protocol).
    let msgs = c
        .simple_query("SELECT name, amount, ok, d FROM t WHERE id = 1")
        .await
        .unwrap();
    let SimpleQueryMessage::Row(r) = msgs
        .iter()
        .find(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(r.get(0), Some("héllo, 世界"));
    assert_eq!(r.get(1), Some("1234.56"));
    assert_eq!(r.get(2), Some("t"));
    assert_eq!(r.get(3), Some("2026-01-02"));
    // Parameters in filters, typed by the plan.
    let rows = c
        .query(
            "SELECT id FROM t WHERE name = $1 AND amount > $2",
            &[&"héllo, 世界", &Decimal::new(1, 0)],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let rows = c
        .query("SELECT $1::text || 'x', $2::bigint + 1", &[&"a", &41i64])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "ax");
    assert_eq!(rows[0].get::<_, i64>(1), 42);
}

#[tokio::test]
async fn errors_have_sqlstates_and_the_connection_survives() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(sqlstate(&c, "SELECT * FROM no_such_table").await, "42P01");
    assert_eq!(sqlstate(&c, "SELEC 1").await, "42601");
    assert_eq!(sqlstate(&c, "SELECT nosuch FROM t").await, "42703");
    assert_eq!(sqlstate(&c, "SELECT a / 0 FROM t").await, "22012");
    assert_eq!(sqlstate(&c, "SET no_such_setting = 1").await, "42704");
    assert_eq!(sqlstate(&c, "CREATE TABLE t (a int)").await, "42P07");
    assert_eq!(
        sqlstate(&c, "CREATE TABLE nosuchschema.t (a int)").await,
        "3F000"
    );
    assert_eq!(
        sqlstate(&c, "COPY (SELECT 1) TO '/tmp/x.csv'").await,
        "0A000"
    );
    // Extended protocol errors too.
    let e = c
        .query("SELECT * FROM missing WHERE a = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn several_statements_in_one_string_run_in_order() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    let msgs = c
        .simple_query("CREATE TABLE t (a int); SELECT count(*) FROM t; INSERT INTO t VALUES (1), (2); SELECT count(*) FROM t")
        .await
        .unwrap();
    let counts = first_column(&msgs);
    assert_eq!(counts, vec!["0", "2"]);
    // An error stops the rest of the string.
    let _ = c
        .simple_query("INSERT INTO t VALUES (3); SELECT 1/0; INSERT INTO t VALUES (4)")
        .await
        .unwrap_err();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

/// The first column of each row of a simple query's answer.
fn first_column(m: &[SimpleQueryMessage]) -> Vec<String> {
    m.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// `SHOW name` on `c`.
async fn setting(c: &tokio_postgres::Client, name: &str) -> String {
    first_value(c.simple_query(&format!("SHOW {name}")).await.unwrap())
}

/// The first column of the first row of a simple query's answer.
fn first_value(m: Vec<SimpleQueryMessage>) -> String {
    first_column(&m).into_iter().next().expect("no row")
}

#[tokio::test]
async fn settings_are_per_connection_and_time_zone_renders() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let a = srv.connect().await;
    let b = srv.connect().await;
    a.batch_execute("SET TIME ZONE 'Asia/Shanghai'; SET search_path TO unified, public; SET application_name = 'a'").await.unwrap();
    let show = first_value;
    assert_eq!(
        show(a.simple_query("SHOW TimeZone").await.unwrap()),
        "Asia/Shanghai"
    );
    assert_eq!(show(b.simple_query("SHOW TimeZone").await.unwrap()), "UTC");
    assert_eq!(
        show(a.simple_query("SELECT current_schema()").await.unwrap()),
        "unified"
    );
    assert_eq!(
        show(b.simple_query("SELECT current_schema()").await.unwrap()),
        "public"
    );
    let q = "SELECT CAST('2026-01-01T00:00:00Z' AS timestamptz)";
    assert!(show(a.simple_query(q).await.unwrap()).starts_with("2026-01-01 08:00:00"));
    assert!(show(b.simple_query(q).await.unwrap()).starts_with("2026-01-01 00:00:00"));
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(show(a.simple_query("SHOW TimeZone").await.unwrap()), "UTC");
    a.batch_execute("SET TIME ZONE '+05:30'").await.unwrap();
    assert!(show(a.simple_query(q).await.unwrap()).starts_with("2026-01-01 05:30:00"));
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(show(a.simple_query("SHOW timezone").await.unwrap()), "UTC");
}

/// The `THP_enabled` line of a process's `/proc/<pid>/status` (Linux ≥ 6.x).
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
}

#[tokio::test]
async fn transparent_huge_pages_are_off_unless_configured() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    assert_eq!(setting(&c, "touchlake.transparent_huge_pages").await, "off");
    // The kernel reports the process flag where it can; this machine's kernel does.
    if let Some(v) = thp_enabled(srv.pid()) {
        assert_eq!(v, "0", "huge pages still enabled for the server process");
    }
    let dir2 = lake();
    let on = Server::start_with(dir2.path(), &[("TOUCHLAKE_TRANSPARENT_HUGE_PAGES", "true")]);
    let c2 = on.connect().await;
    assert_eq!(setting(&c2, "touchlake.transparent_huge_pages").await, "on");
    if let Some(v) = thp_enabled(on.pid()) {
        assert_eq!(v, "1");
    }
}

#[tokio::test]
async fn the_server_configuration_reads_as_settings() {
    let dir = lake();
    let srv = Server::start_with(
        dir.path(),
        &[
            ("TOUCHLAKE_MEMORY_RELEASE_MS", "1234"),
            ("TOUCHLAKE_MEMORY_LIMIT_MB", "777"),
        ],
    );
    let c = srv.connect().await;
    assert_eq!(setting(&c, "touchlake.memory_release_ms").await, "1234");
    assert_eq!(setting(&c, "touchlake.memory_limit_mb").await, "777");
    assert_eq!(
        setting(&c, "touchlake.identity.max_degree.device_id").await,
        "5"
    );
    let all = c.simple_query("SHOW ALL").await.unwrap();
    let names = first_column(&all);
    assert!(names.iter().any(|n| n == "touchlake.lake"), "{names:?}");
    // No object-store option (credentials) is shown.
    assert!(!names.iter().any(|n| n.contains("storage")), "{names:?}");
    // Read-only: 55P02 for the server's settings, 42704 for unknown ones under its
    // prefix; the connection stays up, and a session variable of another prefix works.
    assert_eq!(
        sqlstate(&c, "SET touchlake.memory_limit_mb = 1").await,
        "55P02"
    );
    assert_eq!(
        sqlstate(&c, "RESET touchlake.memory_limit_mb").await,
        "55P02"
    );
    assert_eq!(sqlstate(&c, "SET touchlake.no_such = 1").await, "42704");
    c.batch_execute("SET myapp.tenant = 'x'").await.unwrap();
    assert_eq!(setting(&c, "myapp.tenant").await, "x");
    assert_eq!(setting(&c, "touchlake.memory_limit_mb").await, "777");
    // current_setting() reads the same, and follows SET.
    c.batch_execute("SET search_path TO unified, public")
        .await
        .unwrap();
    let row = c
        .query_one(
            "SELECT current_setting('touchlake.memory_release_ms'), \
             current_setting('search_path'), current_setting('no.such', true)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1234");
    assert_eq!(row.get::<_, String>(1), "unified, public");
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(
        sqlstate(&c, "SELECT current_setting('no_such_setting')").await,
        "42704"
    );
    // A startup option cannot set them either.
    let (c2, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=touchlake dbname=touchlake \
             options='-c touchlake.memory_limit_mb=1'",
            srv.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(setting(&c2, "touchlake.memory_limit_mb").await, "777");
}

#[tokio::test]
async fn transaction_statements_are_accepted() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let mut c = srv.connect().await;
    c.batch_execute("CREATE TABLE t (a int)").await.unwrap();
    {
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO t VALUES ($1)", &[&1i32])
            .await
            .unwrap();
        tx.batch_execute("SAVEPOINT s1; RELEASE SAVEPOINT s1")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    c.batch_execute("BEGIN; SELECT 1; ROLLBACK").await.unwrap();
    // After an error inside a block, statements are refused until ROLLBACK.
    c.batch_execute("BEGIN").await.unwrap();
    let _ = c.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&c, "SELECT 1").await, "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn portals_fetch_in_chunks() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let mut c = srv.connect().await;
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT x FROM generate_series(1, 25) AS g(x) ORDER BY x")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut seen = vec![];
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 10);
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<i64>>());
    tx.commit().await.unwrap();
}

const SLOW: &str = "SELECT count(*) FROM generate_series(1, 2000000000) a(x) WHERE x % 7 = 3";

#[tokio::test]
async fn cancel_request_stops_a_long_query() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let q = tokio::spawn(async move {
        let r = c.simple_query(SLOW).await;
        (r.map(|_| ()), c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (res, c) = q.await.unwrap();
    let err = res.expect_err("query should be cancelled");
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        started.elapsed()
    );
    // The connection is still usable.
    let one: i32 = c.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn statement_timeout_cancels() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute("SET statement_timeout = '300ms'")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(sqlstate(&c, SLOW).await, "57014");
    assert!(started.elapsed() < Duration::from_secs(20));
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    let one: i32 = c.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// CPU time (user + system, in clock ticks) the server process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test]
async fn client_disconnect_frees_the_cpu() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let pid = srv.pid();
    let (c, conn) = srv.connect_with_task().await;
    let q = tokio::spawn(async move {
        let _ = c.simple_query(SLOW).await;
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Kill the connection mid-query: the socket closes without a Terminate.
    conn.abort();
    let _ = conn.await;
    q.abort();
    let _ = q.await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // 2 s of a busy core would be ~200 ticks; an idle server uses next to none.
    assert!(
        used < 40,
        "server still burning CPU after the client left: {used} ticks in 2 s"
    );
}

#[tokio::test]
async fn concurrent_sessions_keep_their_own_settings() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let zones = [
        "UTC",
        "Asia/Shanghai",
        "Europe/Berlin",
        "America/New_York",
        "+05:30",
        "Asia/Tokyo",
        "-03:00",
        "Australia/Sydney",
    ];
    let mut tasks = vec![];
    for (i, zone) in zones.iter().enumerate() {
        let c = srv.connect().await;
        let zone = zone.to_string();
        tasks.push(tokio::spawn(async move {
            c.batch_execute(&format!(
                "SET TIME ZONE '{zone}'; SET application_name = 'client{i}'"
            ))
            .await
            .unwrap();
            for _ in 0..20 {
                let rows = c.simple_query("SHOW TimeZone").await.unwrap();
                let got = first_column(&rows).into_iter().next();
                let n: i64 = c
                    .query_one("SELECT count(*) FROM generate_series(1, 1000)", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n, 1000);
                assert_eq!(got.as_deref(), Some(zone.as_str()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_prepared_statement_sees_the_data_of_each_execute() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    let other = srv.connect().await;
    c.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let count = c
        .prepare("SELECT count(*) FROM t WHERE a > $1")
        .await
        .unwrap();
    let n: i64 = c.query_one(&count, &[&0i32]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // Writes from another connection after the Parse are seen by the next Execute.
    other
        .batch_execute("INSERT INTO t VALUES (2), (3)")
        .await
        .unwrap();
    let n: i64 = c.query_one(&count, &[&0i32]).await.unwrap().get(0);
    assert_eq!(n, 3);
    other
        .batch_execute("DELETE FROM t WHERE a < 3")
        .await
        .unwrap();
    let n: i64 = c.query_one(&count, &[&0i32]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let n: i64 = c.query_one(&count, &[&3i32]).await.unwrap().get(0);
    assert_eq!(n, 0);

    // A table rewritten by the identity run.
    c.batch_execute("CALL identity_run()").await.unwrap();
    let ids = c
        .prepare("SELECT count(*) FROM unified.identities WHERE identifier_type <> $1")
        .await
        .unwrap();
    let n: i64 = c.query_one(&ids, &[&"x"]).await.unwrap().get(0);
    assert_eq!(n, 0);
    other
        .batch_execute(
            "INSERT INTO unified.touchpoints (touchpoint_id, occurred_at, channel, channel_type, \
             event_type, source, run_id, ingested_at, phone, email) VALUES ('t1', now(), 'web', \
             'online', 'page_view', 'test', 'r', now(), '+8613800138000', 'a@example.com'); \
             CALL identity_run()",
        )
        .await
        .unwrap();
    let n: i64 = c.query_one(&ids, &[&"x"]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_filter_folded_to_null_keeps_no_rows() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute(
        "CREATE TABLE ids (t text, v text); INSERT INTO ids VALUES ('phone', '+8613800138000'), ('email', 'a@b.c')",
    )
    .await
    .unwrap();
    // `v = NULL` is never true: PostgreSQL returns no rows (delta-rs's scan, trusted with
    // the folded NULL filter, returned them).
    for sql in [
        "SELECT count(*) FROM ids WHERE t = 'phone' AND v = NULL",
        "SELECT count(*) FROM ids WHERE v = NULL",
        "SELECT count(*) FROM ids WHERE t = 'phone' AND NULL",
    ] {
        let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{sql}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM ids WHERE t = 'phone'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// The physical plan of `sql`, as one text.
async fn physical_plan(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter()
        .filter(|r| r.get::<_, String>(0) == "physical_plan")
        .map(|r| r.get::<_, String>(1))
        .collect()
}

#[tokio::test]
async fn scans_filter_while_decoding_only_for_identity_lookups() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute(
        "CREATE TABLE tp (person_id text, event_type text, n int);
         INSERT INTO tp VALUES ('p1', 'purchase', 1), ('p2', 'page_view', 2), ('p1', 'page_view', 3), (NULL, 'purchase', 4)",
    )
    .await
    .unwrap();
    let broad = "SELECT n FROM tp WHERE event_type = 'purchase' ORDER BY n";
    let lookup = "SELECT n FROM tp WHERE person_id = 'p1' ORDER BY n";
    let ns = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i32>>();
    // A filter most rows may pass: decoded whole, filtered above the scan.
    assert!(physical_plan(&c, broad).await.contains("FilterExec"));
    // A lookup by an identity column: evaluated while decoding, in the Parquet scan.
    let plan = physical_plan(&c, lookup).await;
    assert!(!plan.contains("FilterExec"), "{plan}");
    assert!(plan.contains("predicate=person_id"), "{plan}");
    let before = (
        ns(c.query(broad, &[]).await.unwrap()),
        ns(c.query(lookup, &[]).await.unwrap()),
    );
    assert_eq!(before, (vec![1, 4], vec![1, 3]));
    // The session's own setting turns it on for every filter (`true` arrives as `on`).
    c.batch_execute("SET datafusion.execution.parquet.pushdown_filters = true")
        .await
        .unwrap();
    assert_eq!(
        setting(&c, "datafusion.execution.parquet.pushdown_filters").await,
        "true"
    );
    assert!(!physical_plan(&c, broad).await.contains("FilterExec"));
    let after = (
        ns(c.query(broad, &[]).await.unwrap()),
        ns(c.query(lookup, &[]).await.unwrap()),
    );
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_bad_engine_setting_fails_alone() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute("SET datafusion.execution.batch_size = 4096")
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&c, "SET datafusion.execution.batch_size = 'many'").await,
        "22023"
    );
    assert_eq!(
        sqlstate(&c, "SET datafusion.no_such.option = 1").await,
        "42704"
    );
    // The session goes on with the last good value.
    assert_eq!(setting(&c, "datafusion.execution.batch_size").await, "4096");
    let one: i32 = c.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn pg_settings_shows_each_connections_settings() {
    let dir = lake();
    let srv = Server::start(dir.path());
    let a = srv.connect().await;
    let b = srv.connect().await;
    a.batch_execute("SET TimeZone = 'Asia/Shanghai'; SET application_name = 'dash'")
        .await
        .unwrap();
    let q = "SELECT setting, source, reset_val, context FROM pg_settings WHERE name = $1";
    let row = |r: tokio_postgres::Row| -> (String, String, Option<String>, String) {
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        row(a.query_one(q, &[&"TimeZone"]).await.unwrap()),
        (
            "Asia/Shanghai".into(),
            "session".into(),
            Some("UTC".into()),
            "user".into()
        )
    );
    assert_eq!(
        row(b.query_one(q, &[&"TimeZone"]).await.unwrap()),
        (
            "UTC".into(),
            "default".into(),
            Some("UTC".into()),
            "user".into()
        )
    );
    // Every SHOW ALL setting is there, PostgreSQL's columns included.
    let show_all = a.simple_query("SHOW ALL").await.unwrap();
    let n: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_settings WHERE unit IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, first_column(&show_all).len());
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(
        row(a.query_one(q, &[&"TimeZone"]).await.unwrap()).1,
        "default"
    );
}
