//! Bad input: malformed statements and random bytes on raw sockets; each gets an error
//! or a closed connection, and the server keeps serving others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use touchlake_tests::Server;

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "(",
    ")",
    "'",
    "\"",
    ";",
    "1",
    "*",
    "unified.touchpoints",
    "GROUP BY",
    "ORDER",
    "INSERT INTO",
    "VALUES",
    "CREATE TABLE",
    "DROP",
    "x",
    "NULL",
    "::",
    "$1",
    "--",
    "/*",
    "UNION",
    "JOIN",
    "ON",
    "count(",
    "SET",
    "SHOW",
    "BEGIN",
    "é",
    "\\",
    "%",
    "@v",
    "LIMIT -1",
    "CAST(",
    "AS",
    "int",
    "numeric(99,99)",
];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test]
async fn malformed_statements_get_errors_and_the_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut rng = Lcg(7);
    let mut errors = 0;
    for _ in 0..300 {
        let n = 1 + rng.next() % 8;
        let sql: Vec<&str> = (0..n)
            .map(|_| FRAGMENTS[(rng.next() as usize) % FRAGMENTS.len()])
            .collect();
        let sql = sql.join(" ");
        if c.simple_query(&sql).await.is_err() {
            errors += 1;
        }
        // A random BEGIN may have opened a block that the error aborted.
        c.batch_execute("ROLLBACK").await.unwrap();
        let one: i32 = c
            .query_one("SELECT 1::int", &[])
            .await
            .unwrap_or_else(|e| panic!("after {sql:?}: {e}"))
            .get(0);
        assert_eq!(one, 1);
    }
    assert!(
        errors > 200,
        "only {errors} of 300 random statements failed"
    );
}

#[test]
fn random_bytes_and_bogus_lengths_do_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path());
    let mut rng = Lcg(11);
    for i in 0..200 {
        let Ok(mut s) = TcpStream::connect(&srv.addr) else {
            panic!("server stopped accepting at {i}")
        };
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let len = (rng.next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        match i % 4 {
            // A startup packet that claims to be huge.
            0 => {
                bytes = [
                    &0x7fff_ffffu32.to_be_bytes()[..],
                    &196608u32.to_be_bytes()[..],
                ]
                .concat()
            }
            // A length smaller than the header.
            1 => bytes = [&2u32.to_be_bytes()[..], &[0u8; 4][..]].concat(),
            _ => {}
        }
        let _ = s.write_all(&bytes);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    // A valid startup followed by a garbage message type and bogus length.
    for _ in 0..20 {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let params = b"user\0touchlake\0database\0touchlake\0\0";
        let len = (8 + params.len()) as u32;
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend_from_slice(&196608u32.to_be_bytes());
        msg.extend_from_slice(params);
        s.write_all(&msg).unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xf0, b'x']);
        let _ = s.write_all(&[b'?', 0, 0, 0, 4]);
        let _ = s.read(&mut buf);
    }
    assert!(srv.alive(), "server died");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = srv.connect().await;
        let one: i32 = c.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });
}

/// A statement nested deeper than the server allows (a long `+` or `OR` chain, as generated
/// SQL makes) is refused with 54001 like PostgreSQL's stack depth limit, not a process abort
/// (a 20,000-term `+` chain used to overflow a runtime thread's stack and kill the server);
/// a chain under the limit runs, over the wire, on the same connection.
#[tokio::test]
async fn deeply_nested_statements_are_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    for terms in [20_000usize, 1_000_000] {
        let sql = format!("SELECT {}", vec!["1"; terms].join(" + "));
        let err = c.simple_query(&sql).await.unwrap_err();
        assert_eq!(
            err.code().map(|s| s.code()),
            Some("54001"),
            "{terms} terms: {err}"
        );
    }
    let ors: Vec<String> = (0..50_000).map(|i| format!("x = {i}")).collect();
    let err = c
        .simple_query(&format!(
            "SELECT count(*) FROM (VALUES (1)) t(x) WHERE {}",
            ors.join(" OR ")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("54001"));
    // Under the limit: 900 terms.
    let sum: i64 = c
        .query_one(
            &format!("SELECT CAST({} AS bigint)", vec!["1"; 900].join(" + ")),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 900);
    // Another connection still gets answers.
    let other = srv.connect().await;
    let one: i32 = other.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Under a small query memory limit, an aggregate and a sort larger than it spill to
/// disk and answer correctly (the default limit is 80% of the machine's memory: a big
/// query spills or fails with 53200 instead of the server being killed), and the server
/// stays up.
#[tokio::test]
async fn queries_larger_than_the_memory_limit_spill_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start_with(dir.path(), &[("TOUCHLAKE_MEMORY_LIMIT_MB", "128")]);
    let c = srv.connect().await;
    let groups: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT x % 2000000 AS k, count(*) FROM generate_series(1, 4000000) t(x) GROUP BY 1) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(groups, 2_000_000);
    // A sort of about 150 MB (2M md5 strings, twice) under 128 MB spills; when it
    // finishes (DataFusion's merge of the spilled runs may itself run out of the pool under
    // load: then 53200), every row is there once, in order, numbered 1..n.
    let sorted = c
        .query_one(
            "SELECT count(*), CAST(sum(rn) AS bigint), count(*) FILTER (WHERE prev > h) FROM (
               SELECT h, row_number() OVER (ORDER BY h) AS rn, lag(h) OVER (ORDER BY h) AS prev
               FROM (SELECT md5(CAST(x AS text)) AS h FROM generate_series(1, 2000000) t(x)) a) s",
            &[],
        )
        .await;
    match sorted {
        Ok(row) => {
            let (n, sum, unordered): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                (n, sum, unordered),
                (2_000_000, 2_000_000 * 2_000_001 / 2, 0)
            );
        }
        Err(e) => assert_eq!(e.code().map(|s| s.code()), Some("53200"), "{e}"),
    }
    // A top-k cannot spill: past the limit it fails with 53200, the connection stays.
    let top = c
        .query_one(
            "SELECT md5(CAST(x AS text)) AS h FROM generate_series(1, 3000000) t(x) ORDER BY h OFFSET 2500000 LIMIT 1",
            &[],
        )
        .await;
    if let Err(e) = &top {
        assert_eq!(e.code().map(|s| s.code()), Some("53200"), "{e}");
    }
    // MATCH_RECOGNIZE holds its input in memory: about 170 MB of input is refused, a
    // small one matches.
    let mr = "SELECT count(*) FROM (SELECT x, md5(CAST(x AS text)) AS h FROM generate_series(1, {n}) t(x)) AS d \
              MATCH_RECOGNIZE (ORDER BY x MEASURES COUNT(*) AS k PATTERN (A B) DEFINE B AS B.h > A.h) AS m";
    let err = c
        .simple_query(&mr.replace("{n}", "3000000"))
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("53200"), "{err}");
    let matched: i64 = c
        .query_one(&mr.replace("{n}", "1000"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(matched > 0 && matched <= 500, "{matched}");
    let one: i32 = c.query_one("SELECT 1::int", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(srv.alive());
}

/// Arrays built from numbers rather than data (`range`, `generate_series` as a scalar,
/// `array_repeat`) are refused past PostgreSQL's largest array with 54000 instead of an
/// allocation that gets the server killed (`range(1, 3000000000)` did); small ones and the
/// streaming table function are unaffected.
#[tokio::test]
async fn arrays_past_the_size_limit_are_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path());
    let c = srv.connect().await;
    for sql in [
        "SELECT cardinality(range(1, 3000000000))",
        "SELECT cardinality(generate_series(TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-02', INTERVAL '1 microsecond'))",
        "SELECT cardinality(array_repeat(array_repeat(1, 20000), 20000))",
        "SELECT sum(cardinality(range(x, x + 2000000))) FROM generate_series(1, 100) t(x)",
        // Text past PostgreSQL's 1 GB value ("requested length too large").
        "SELECT length(lpad('x', 2000000000))",
        "SELECT length(rpad('x', 1100000000, 'y'))",
        "SELECT length(repeat('ab', 600000000))",
        "SELECT sum(length(lpad('a', x * 200000))) FROM generate_series(1, 8000) t(x)",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(err.code().map(|s| s.code()), Some("54000"), "{sql}: {err}");
    }
    let row = c
        .query_one(
            "SELECT CAST(cardinality(range(1, 1000001)) AS bigint), CAST(cardinality(array_repeat(7, 5)) AS bigint), \
             (SELECT count(*) FROM generate_series(1, 200000000)), \
             lpad('ab', 5, 'x') || rpad('ab', 4) || repeat('ab', 3), \
             CAST(length(repeat('ab', 1000000)) AS bigint)",
            &[],
        )
        .await
        .unwrap();
    let got: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(got, (1_000_000, 5, 200_000_000));
    let text: (String, i64) = (row.get(3), row.get(4));
    assert_eq!(text, ("xxxabab  ababab".to_string(), 2_000_000));
    assert!(srv.alive());
}
