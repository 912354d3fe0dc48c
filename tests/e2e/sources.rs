//! The other source kinds end to end through the server: `COPY … FROM STDIN` (psql
//! `\copy` and tokio-postgres `copy_in`) into tables and into a source's pipeline; the
//! Segment-compatible HTTP collector (limits, messageId dedup, clock skew, 50 concurrent
//! clients, kill -9 after the 200s); scheduled compaction. Database sources are in
//! `databases.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::SinkExt;
use touchlake_tests::{Server, psql};

pub(crate) async fn scalar_i64(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

pub(crate) async fn run_counts(c: &tokio_postgres::Client, source: &str) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT coalesce(sum(rows_read), 0)::bigint, coalesce(sum(rows_accepted), 0)::bigint, \
             coalesce(sum(rows_rejected), 0)::bigint, coalesce(sum(rows_duplicate), 0)::bigint \
             FROM quality.ingest_runs WHERE source = $1",
            &[&source],
        )
        .await
        .expect("ingest_runs");
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_stdin_into_tables_and_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("lake"));
    let url = server.url();
    let c = server.connect().await;
    c.batch_execute(
        "CREATE TABLE public.orders (id bigint NOT NULL, name text, amount decimal(10,2), at timestamptz)",
    )
    .await
    .expect("create table");

    // psql \copy, CSV with a header and a quoted comma.
    let csv = dir.path().join("orders.csv");
    write(
        &csv,
        "id,name,amount,at\n1,\"Li, Wei\",12.50,2026-01-01T10:00:00Z\n2,Ann,,2026-01-02T10:00:00Z\n3,,7,\n",
    );
    let cmd = format!(
        "\\copy orders FROM '{}' WITH (FORMAT csv, HEADER)",
        csv.display()
    );
    let (out, err, ok) = psql(&url, &["-c", &cmd]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 3");

    // psql \copy, text format: tabs, \N, escapes, a column list.
    let txt = dir.path().join("orders.txt");
    write(&txt, "4\ttab\\there\n5\t\\N\n");
    let cmd = format!("\\copy orders (id, name) FROM '{}'", txt.display());
    let (out, err, ok) = psql(&url, &["-c", &cmd]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 2");
    let r = c
        .query_one(
            "SELECT count(*), sum(amount)::text, count(name), max(CASE WHEN id = 4 THEN name END) FROM orders",
            &[],
        )
        .await
        .expect("orders");
    assert_eq!(r.get::<_, i64>(0), 5);
    assert_eq!(r.get::<_, String>(1), "19.50");
    assert_eq!(r.get::<_, i64>(2), 3);
    assert_eq!(r.get::<_, String>(3), "tab\there");

    // A bad value fails the whole COPY with 22P02 and the line; nothing is written.
    let bad = dir.path().join("bad.csv");
    write(&bad, "6,ok,1\n7,bad,12x\n");
    let cmd = format!(
        "\\copy orders (id, name, amount) FROM '{}' CSV",
        bad.display()
    );
    let (_, err, ok) = psql(&url, &["-c", &cmd]);
    assert!(!ok);
    assert!(
        err.contains("invalid input syntax for type numeric(10,2): \"12x\""),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
    // NOT NULL is enforced.
    write(&bad, "\\N\tnobody\n");
    let cmd = format!("\\copy orders (id, name) FROM '{}'", bad.display());
    let (_, err, ok) = psql(&url, &["-c", &cmd]);
    assert!(!ok && err.contains("violates not-null constraint"), "{err}");
    assert_eq!(scalar_i64(&c, "SELECT count(*) FROM orders").await, 5);

    // tokio-postgres copy_in (extended protocol), then the connection is still usable.
    let sink = c
        .copy_in("COPY orders (id, name) FROM STDIN (FORMAT csv)")
        .await
        .expect("copy_in");
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"10,x\n11,y\n"))
        .await
        .expect("send");
    let n = sink.as_mut().finish().await.expect("finish");
    assert_eq!(n, 2);
    assert_eq!(scalar_i64(&c, "SELECT count(*) FROM orders").await, 7);

    // Unknown table / source: clear errors, connection stays up.
    let e = c
        .copy_in::<_, bytes::Bytes>("COPY nope FROM STDIN")
        .await
        .err()
        .expect("unknown table");
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"));
    let e = c
        .copy_in::<_, bytes::Bytes>("COPY sources.nope FROM STDIN CSV HEADER")
        .await
        .err()
        .expect("unknown source");
    assert_eq!(e.code().map(|c| c.code()), Some("42704"), "{e:?}");

    // COPY into a source: the pipeline (mapping, quarantine, dedup), exactly once.
    c.batch_execute(
        "CREATE SOURCE calls WITH (kind = 'copy', channel = 'call_center', channel_type = 'offline', \
         natural_key = ARRAY['call_id'], mapping.occurred_at = 'started', \
         mapping.event_type = '''service_call''', mapping.phone = 'phone_e164(caller, ''CN'')', \
         mapping.duration_ms = 'CAST(seconds AS bigint) * 1000', format.timezone = 'Asia/Shanghai')",
    )
    .await
    .expect("create source");
    let calls = dir.path().join("calls.csv");
    write(
        &calls,
        "call_id,started,caller,seconds\nc1,2026-03-01 09:00:00,138 0013 8000,60\n\
         c2,2026-03-01 09:05:00,+86 13800138001,abc\nc3,not a time,13800138002,5\nc1,2026-03-01 09:00:00,138 0013 8000,60\n",
    );
    let cmd = format!("\\copy sources.calls FROM '{}' CSV HEADER", calls.display());
    let (out, err, ok) = psql(&url, &["-c", &cmd]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 4");
    assert!(
        err.contains("4 read, 1 accepted, 2 rejected, 1 duplicate"),
        "notice: {err}"
    );
    // The same data again adds nothing.
    let (_, err, ok) = psql(&url, &["-c", &cmd]);
    assert!(ok, "{err}");
    assert!(err.contains("0 accepted"), "{err}");
    let r = c
        .query_one(
            "SELECT count(*), min(phone), min(duration_ms), min(occurred_at) FROM unified.touchpoints WHERE source = 'calls'",
            &[],
        )
        .await
        .expect("touchpoints");
    assert_eq!(r.get::<_, i64>(0), 1);
    assert_eq!(r.get::<_, String>(1), "+8613800138000");
    assert_eq!(r.get::<_, i64>(2), 60_000);
    let t: chrono::DateTime<chrono::Utc> = r.get(3);
    assert_eq!(
        t.to_rfc3339(),
        "2026-03-01T01:00:00+00:00",
        "09:00 in Shanghai"
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM quality.rejected WHERE source = 'calls'"
        )
        .await,
        2
    );
    let (read, acc, rej, dup) = run_counts(&c, "calls").await;
    assert_eq!(read, acc + rej + dup);
    assert_eq!((read, acc), (8, 1));
}

/// POST JSON with reqwest, the write key as the Basic-auth user; returns (status, body).
async fn post(addr: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(k) = auth {
        req = req.basic_auth(k, None::<&str>);
    }
    let resp = req.send().await.expect("post to the collector");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn track(id: &str, user: &str, revenue: f64) -> String {
    format!(
        r#"{{"type":"track","messageId":"{id}","userId":"{user}","event":"Order Completed","properties":{{"revenue":{revenue},"currency":"cny"}},"timestamp":"2026-05-01T10:00:00Z","context":{{"page":{{"url":"https://shop/checkout"}}}}}}"#
    )
}

async fn wait_for(c: &tokio_postgres::Client, sql: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = c
            .query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1);
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const KEY: &str = "wk_test_0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn http_collector_segment_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let env = [("TOUCHLAKE_HTTP_LISTEN", "127.0.0.1:0")];
    let server = Server::start_with(&lake, &env);
    let http = server.http.clone().expect("collector address");
    let c = server.connect().await;
    c.batch_execute(&format!(
        "CREATE SOURCE web_events WITH (kind = 'http', channel = 'web', channel_type = 'online', write_key = '{KEY}')"
    ))
    .await
    .expect("create http source");

    // Auth and limits.
    let (s, _) = post(&http, "/v1/track", None, &track("a0", "u0", 1.0)).await;
    assert_eq!(s, 401);
    let (s, _) = post(
        &http,
        "/v1/track",
        Some("wrong_key_123"),
        &track("a0", "u0", 1.0),
    )
    .await;
    assert_eq!(s, 401);
    let (s, b) = post(&http, "/v1/track", Some(KEY), "{not json").await;
    assert_eq!(s, 400, "{b}");
    let big = format!(
        r#"{{"type":"track","messageId":"big","userId":"u","event":"x","properties":{{"pad":"{}"}}}}"#,
        "x".repeat(33 * 1024)
    );
    let (s, b) = post(&http, "/v1/track", Some(KEY), &big).await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("32768"), "{b}");
    let events: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"type":"track","messageId":"pad{i}","userId":"u","event":"x","properties":{{"pad":"{}"}}}}"#, "y".repeat(15 * 1024)))
        .collect();
    let (s, b) = post(
        &http,
        "/v1/batch",
        Some(KEY),
        &format!(r#"{{"batch":[{}]}}"#, events.join(",")),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    // A batch with one bad event is refused whole.
    let (s, _) = post(
        &http,
        "/v1/batch",
        Some(KEY),
        &format!(
            r#"{{"batch":[{},{{"type":"track","userId":"u"}}]}}"#,
            track("half", "u", 1.0)
        ),
    )
    .await;
    assert_eq!(s, 400);

    // Single calls of each type, a retry of the same messageId, and clock skew: the
    // client's clock is 6 years behind; its event happened 5 s before it sent it.
    let mut expect_read = 0;
    for (path, body) in [
        ("/v1/track", track("t1", "u1", 99.5)),
        ("/v1/track", track("t1", "u1", 99.5)),
        ("/v1/identify", r#"{"messageId":"i1","userId":"u1","anonymousId":"anon-1","traits":{"email":" Li@Example.COM ","phone":"+86 138 0013 8000"}}"#.to_string()),
        ("/v1/page", r#"{"messageId":"p1","anonymousId":"anon-1","name":"Home","properties":{"url":"https://shop/"}}"#.to_string()),
        ("/v1/screen", r#"{"messageId":"s1","anonymousId":"anon-1","name":"Cart"}"#.to_string()),
        ("/v1/alias", r#"{"messageId":"al1","userId":"u1","previousId":"anon-1"}"#.to_string()),
        ("/v1/page", r#"{"messageId":"p2","anonymousId":"anon-2","name":"Home"}"#.to_string()),
        ("/v1/alias", r#"{"messageId":"al2","userId":"u1","previousId":"anon-2"}"#.to_string()),
        ("/v1/track", r#"{"messageId":"skew","userId":"u9","event":"Login","timestamp":"2020-01-01T00:00:00Z","sentAt":"2020-01-01T00:00:05Z"}"#.to_string()),
    ] {
        let (s, b) = post(&http, path, Some(KEY), &body).await;
        assert_eq!(s, 200, "{path}: {b}");
        expect_read += 1;
    }
    let posted_at = chrono::Utc::now();

    // 50 concurrent clients, 10 batches of 10 events each; every 5th batch is sent twice
    // (a client retry).
    let mut tasks = vec![];
    for client in 0..50 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            for b in 0..10 {
                let evs: Vec<String> = (0..10)
                    .map(|e| {
                        track(
                            &format!("c{client}-b{b}-e{e}"),
                            &format!("user{client}"),
                            1.25,
                        )
                    })
                    .collect();
                let body = format!(
                    r#"{{"batch":[{}],"sentAt":"2026-05-01T10:00:00Z"}}"#,
                    evs.join(",")
                );
                let times = if b % 5 == 0 { 2 } else { 1 };
                for _ in 0..times {
                    let (s, resp) = post(&http, "/v1/batch", Some(KEY), &body).await;
                    assert_eq!(s, 200, "{resp}");
                    sent += 10;
                }
            }
            sent
        }));
    }
    for t in tasks {
        expect_read += t.await.expect("client task");
    }
    let distinct = 8 + 50 * 10 * 10; // t1 once, i1, p1, s1, al1, p2, al2, skew + the batches
    let got = wait_for(
        &c,
        "SELECT count(*) FROM unified.touchpoints WHERE source = 'web_events'",
        distinct,
    )
    .await;
    assert_eq!(got, distinct);
    let got = wait_for(
        &c,
        "SELECT coalesce(sum(rows_read), 0)::bigint FROM quality.ingest_runs WHERE source = 'web_events'",
        expect_read,
    )
    .await;
    assert_eq!(got, expect_read);
    let (read, acc, rej, dup) = run_counts(&c, "web_events").await;
    assert_eq!(
        (read, acc, rej, dup),
        (expect_read, distinct, 0, expect_read - distinct)
    );

    // The default Segment mapping.
    let r = c
        .query_one(
            "SELECT event_type, user_id, revenue::text, currency, content FROM unified.touchpoints \
             WHERE source = 'web_events' AND user_id = 'u1' AND event_type = 'order_completed'",
            &[],
        )
        .await
        .expect("track row");
    assert_eq!(r.get::<_, String>(0), "order_completed");
    assert_eq!(r.get::<_, String>(2), "99.50");
    assert_eq!(r.get::<_, String>(3), "CNY");
    assert_eq!(r.get::<_, String>(4), "https://shop/checkout");
    let r = c
        .query_one(
            "SELECT email, phone, anonymous_id FROM unified.touchpoints WHERE source = 'web_events' AND event_type = 'identify'",
            &[],
        )
        .await
        .expect("identify row");
    assert_eq!(r.get::<_, String>(0), "li@example.com");
    assert_eq!(r.get::<_, String>(1), "+8613800138000");
    assert_eq!(r.get::<_, String>(2), "anon-1");
    // identify and alias link the ids: after an identity run the anonymous pages and the
    // user's orders are one person.
    c.batch_execute("CALL identity_run()")
        .await
        .expect("identity run");
    let persons: i64 = c
        .query_one(
            "SELECT count(DISTINCT person_id) FROM unified.touchpoints WHERE source = 'web_events' \
             AND (user_id = 'u1' OR anonymous_id IN ('anon-1', 'anon-2'))",
            &[],
        )
        .await
        .expect("persons")
        .get(0);
    assert_eq!(persons, 1);
    let types = c
        .query(
            "SELECT DISTINCT event_type FROM unified.touchpoints WHERE source = 'web_events' ORDER BY 1",
            &[],
        )
        .await
        .expect("types");
    let types: Vec<String> = types.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        types,
        [
            "alias",
            "identify",
            "login",
            "order_completed",
            "page_view",
            "screen_view"
        ]
    );
    let skew: chrono::DateTime<chrono::Utc> = c
        .query_one(
            "SELECT occurred_at FROM unified.touchpoints WHERE source = 'web_events' AND event_type = 'login'",
            &[],
        )
        .await
        .expect("skew row")
        .get(0);
    let expected = posted_at - chrono::Duration::seconds(5);
    assert!(
        (skew - expected).num_seconds().abs() < 120,
        "corrected {skew}, expected about {expected}"
    );

    // kill -9 right after a burst of 200s: after a restart every event is there.
    for b in 0..20 {
        let evs: Vec<String> = (0..5)
            .map(|e| track(&format!("k{b}-{e}"), "killer", 2.0))
            .collect();
        let (s, _) = post(
            &http,
            "/v1/batch",
            Some(KEY),
            &format!(r#"{{"batch":[{}]}}"#, evs.join(",")),
        )
        .await;
        assert_eq!(s, 200);
    }
    drop(c);
    let _ = Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status();
    drop(server);
    let server = Server::start_with(&lake, &env);
    let c = server.connect().await;
    let got = wait_for(
        &c,
        "SELECT count(*) FROM unified.touchpoints WHERE source = 'web_events'",
        distinct + 100,
    )
    .await;
    assert_eq!(got, distinct + 100);
    let (read, acc, rej, dup) = run_counts(&c, "web_events").await;
    assert_eq!(read, acc + rej + dup);
    assert_eq!(acc, distinct + 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_tables_are_compacted_on_a_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let env = [
        ("TOUCHLAKE_COMPACT_EVERY_SECONDS", "1"),
        ("TOUCHLAKE_COMPACT_MIN_FILES", "4"),
    ];
    let server = Server::start_with(&lake, &env);
    let c = server.connect().await;
    c.batch_execute(
        "CREATE SOURCE pings WITH (kind = 'copy', channel = 'app', channel_type = 'online', \
         natural_key = ARRAY['id'], mapping.occurred_at = 'at', mapping.event_type = '''ping''')",
    )
    .await
    .expect("create source");
    for i in 0..6 {
        let sink = c
            .copy_in("COPY sources.pings (id, at) FROM STDIN (FORMAT csv)")
            .await
            .expect("copy_in");
        let mut sink = Box::pin(sink);
        let data = format!("p{i}a,2026-01-01T00:00:0{i}Z\np{i}b,2026-01-01T00:00:0{i}Z\n");
        sink.send(bytes::Bytes::from(data)).await.expect("send");
        sink.as_mut().finish().await.expect("finish");
    }
    let log = lake.join("unified/touchpoints/_delta_log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let compacted = loop {
        let found = std::fs::read_dir(&log)
            .expect("delta log")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .map(|t| t.contains("\"operation\":\"OPTIMIZE\""))
                    .unwrap_or(false)
            });
        if found || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(compacted, "no OPTIMIZE commit on unified.touchpoints");
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM unified.touchpoints WHERE source = 'pings'"
        )
        .await,
        12
    );
}
