//! `to_char` against a real PostgreSQL (Debian's `postgresql`): the same SQL, with
//! PostgreSQL's template patterns, on generated timestamps, dates and numbers, must give
//! the same text from both servers.

use touchlake_tests::Server;

use crate::databases::Postgres;

/// A real PostgreSQL and a Touchlake server, a client of each.
struct Both {
    _cluster: Postgres,
    _lake: tempfile::TempDir,
    _server: Server,
    pg: tokio_postgres::Client,
    ours: tokio_postgres::Client,
}

impl Both {
    async fn start() -> Both {
        let cluster = Postgres::start();
        let pg = cluster.client().await;
        let lake = tempfile::tempdir().unwrap();
        let server = Server::start(lake.path());
        let ours = server.connect().await;
        Both {
            _cluster: cluster,
            _lake: lake,
            _server: server,
            pg,
            ours,
        }
    }
}

/// A small deterministic generator (no dependency on a random crate's stream).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Timestamps: random ones from 1971 to 2040, and the edges of ISO years, months and days.
fn timestamps() -> Vec<String> {
    let mut rng = Lcg(7);
    let mut out = vec![];
    for _ in 0..150 {
        let secs = 31_536_000 + (rng.next() % 2_208_988_800) as i64;
        let micros = rng.next() % 1_000_000;
        let t = chrono::DateTime::from_timestamp(secs, 0).expect("time");
        out.push(format!("{}.{micros:06}", t.format("%Y-%m-%d %H:%M:%S")));
    }
    for year in [2015, 2020, 2021, 2026, 2027, 2032] {
        for (m, d) in [
            (12, 28),
            (12, 29),
            (12, 31),
            (1, 1),
            (1, 3),
            (1, 4),
            (2, 29),
            (3, 1),
        ] {
            let y = if m == 12 { year - 1 } else { year };
            if chrono::NaiveDate::from_ymd_opt(y, m, d).is_some() {
                for hms in ["00:00:00", "11:59:59.999999", "12:00:00", "23:30:05.05"] {
                    out.push(format!("{y:04}-{m:02}-{d:02} {hms}"));
                }
            }
        }
    }
    out
}

const TIME_TEMPLATES: &[&str] = &[
    "YYYY-MM-DD HH24:MI:SS",
    "YYYY-MM-DD\"T\"HH24:MI:SS.US",
    "HH12:MI:SS AM",
    "FMHH12:MI pm",
    "hh:mi a.m. P.M.",
    "Month DD, YYYY",
    "FMMonth FMDD, YYYY",
    "MONTH month Mon MON mon",
    "Day DAY day Dy DY dy",
    "FMDay, FMDDth FMMonth",
    "DDth DDTH FMDDth",
    "D ID DDD IDDD",
    "IYYY-IW IYY IY I",
    "YYYY YYY YY Y Y,YYY",
    "WW W Q",
    "CC J",
    "MS US FF1 FF3 FF6",
    "SSSS SSSSS",
    "RM rm FMRM",
    "AD ad A.D. BC",
    "\"Week\" IW \"of\" IYYY",
    "YYYY\"年\"MM\"月\"DD\"日\"",
    "yyyy-mm-dd hh24:mi",
    "FMYYYY FMMM FMDD FMHH24 FMMI FMSS",
    "HH24\\h MI\\m",
    "TZ OF",
];

const NUMBER_TEMPLATES: &[&str] = &[
    "9999",
    "0000",
    "9,999",
    "99G999D99",
    "FM999,999.00",
    "FM999,999.99",
    "999,999.99",
    "9.99",
    "0.99",
    "990.99",
    "FM990.99",
    ".99",
    "9.",
    "FM9.",
    "FM9.9",
    "S9999",
    "S0.00",
    "9.99S",
    "9999MI",
    "FM9.99MI",
    "999PR",
    "FM999PR",
    "$9,999.99",
    "999 \"units\"",
    "09,999.9",
];

fn numbers() -> Vec<String> {
    let mut rng = Lcg(11);
    let mut out: Vec<String> = [
        "0",
        "0.5",
        "-0.5",
        "7",
        "-7",
        "12.345",
        "-1234.5",
        "0.05",
        "99.995",
        "123.4",
        "1",
        "10",
        "999",
        "1000",
        "-1000",
        "12345",
        "0.004",
        "2.5",
        "3.5",
        "-2.5",
        "1234567.891",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..40 {
        let scale = 10f64.powi((rng.next() % 7) as i32 - 2);
        let v = (rng.next() % 100_000) as f64 / 100.0 * scale;
        let v = if rng.next().is_multiple_of(3) { -v } else { v };
        out.push(format!("{v}"));
    }
    out
}

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Option<String>> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The first column of a query's rows as text (a bigint or a text column).
async fn as_text(c: &tokio_postgres::Client, sql: &str) -> Vec<Option<String>> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            r.try_get::<_, i64>(0)
                .map(|v| v.to_string())
                .ok()
                .or_else(|| r.get::<_, Option<String>>(0))
        })
        .collect()
}

fn values(items: &[String], quote: bool) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if quote {
                format!("({i}, '{v}')")
            } else {
                format!("({i}, {v})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread")]
async fn to_char_matches_postgresql() {
    let both = Both::start().await;
    let (src, ours) = (&both.pg, &both.ours);
    src.batch_execute("SET TimeZone = 'UTC'").await.unwrap();

    let ts = values(&timestamps(), true);
    let mut compared = 0;
    for t in TIME_TEMPLATES {
        let t = t.replace('\'', "''");
        for cast in ["timestamp", "timestamptz", "date"] {
            if cast == "date" && (t.contains("TZ") || t.contains("US")) {
                continue;
            }
            let sql = format!(
                "SELECT to_char(CAST(v AS {cast}), '{t}') FROM (VALUES {ts}) AS x(i, v) ORDER BY i"
            );
            let (want, got) = (rows(src, &sql).await, rows(ours, &sql).await);
            for (k, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(g, w, "to_char({cast} '{}', '{t}')", timestamps()[k]);
            }
            assert_eq!(got.len(), want.len());
            compared += want.len();
        }
    }
    // A timestamptz shows in the session's TimeZone.
    for zone in ["Asia/Kolkata", "America/New_York"] {
        for c in [src, ours] {
            c.batch_execute(&format!("SET TimeZone = '{zone}'"))
                .await
                .unwrap();
        }
        for t in ["YYYY-MM-DD HH24:MI:SS TZ OF", "FMDay HH12 AM TZH:TZM"] {
            let sql = format!(
                "SELECT to_char(CAST(v AS timestamptz), '{t}') FROM (VALUES {ts}) AS x(i, v) ORDER BY i"
            );
            let (want, got) = (rows(src, &sql).await, rows(ours, &sql).await);
            assert_eq!(got, want, "{zone} {t}");
            compared += want.len();
        }
    }
    let nums = numbers();
    let nv = values(&nums, false);
    for t in NUMBER_TEMPLATES {
        let t = t.replace('\'', "''");
        let sql = format!(
            "SELECT to_char(CAST(v AS double precision), '{t}') FROM (VALUES {nv}) AS x(i, v) ORDER BY i"
        );
        let (want, got) = (rows(src, &sql).await, rows(ours, &sql).await);
        for (k, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "to_char({}, '{t}')", nums[k]);
        }
        compared += want.len();
    }
    // NULLs stay NULL; an unsupported number pattern is an error, and the session goes on.
    let null: Option<String> = ours
        .query_one("SELECT to_char(CAST(NULL AS timestamp), 'YYYY')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(null, None);
    let e = ours
        .query_one("SELECT to_char(1.5, '9.9EEEE')", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22023"), "{e}");
    assert!(compared > 20_000, "{compared}");
    println!("to_char: {compared} values x templates equal PostgreSQL's");
}

/// Templates to read, with inputs each (written by PostgreSQL's own `to_char` from the
/// generated timestamps, and messy variants).
const READ_TEMPLATES: &[&str] = &[
    "YYYY-MM-DD HH24:MI:SS",
    "YYYY-MM-DD HH24:MI:SS.US",
    "YYYY-MM-DD HH24:MI:SS.MS",
    "DD Mon YYYY HH12:MI AM",
    "FMMonth FMDD, YYYY",
    "YYYYMMDDHH24MISS",
    "DD/MM/YY",
    "YYYY-DDD",
    "Dy, DD Mon YYYY HH24:MI:SS",
    "YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM",
];

#[tokio::test(flavor = "multi_thread")]
async fn to_timestamp_and_to_date_match_postgresql() {
    let both = Both::start().await;
    let (src, ours) = (&both.pg, &both.ours);
    let ts = values(&timestamps(), true);
    let mut compared = 0;
    for zone in ["UTC", "Asia/Kolkata"] {
        for c in [src, ours] {
            c.batch_execute(&format!("SET TimeZone = '{zone}'"))
                .await
                .unwrap();
        }
        for t in READ_TEMPLATES {
            let t = t.replace('\'', "''");
            // The texts: PostgreSQL's to_char of every timestamp, plus variants with other
            // separators, blanks and case.
            let texts: Vec<String> = rows(
                src,
                &format!(
                    "SELECT to_char(CAST(v AS timestamptz), '{t}') FROM (VALUES {ts}) AS x(i, v) ORDER BY i"
                ),
            )
            .await
            .into_iter()
            .flatten()
            .flat_map(|s| {
                let messy = s.replace('-', "/").replace(' ', "  ");
                let lower = s.to_lowercase();
                [s, messy, lower]
            })
            .collect();
            let tv = values(
                &texts
                    .iter()
                    .map(|s| s.replace('\'', "''"))
                    .collect::<Vec<_>>(),
                true,
            );
            for sql in [
                format!(
                    "SELECT CAST(round(date_part('epoch', to_timestamp(v, '{t}')) * 1000000) AS bigint) \
                     FROM (VALUES {tv}) AS x(i, v) ORDER BY i"
                ),
                format!(
                    "SELECT CAST(to_date(v, '{t}') AS text) FROM (VALUES {tv}) AS x(i, v) ORDER BY i"
                ),
            ] {
                let (want, got) = (as_text(src, &sql).await, as_text(ours, &sql).await);
                for (k, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(g, w, "{zone}: '{}' read as '{t}'", texts[k]);
                }
                compared += want.len();
            }
        }
    }
    // Text that does not fit: PostgreSQL's codes (22007 format, 22008 range), and the
    // session goes on. A strftime template still goes to DataFusion's function.
    for (sql, code) in [
        ("SELECT to_timestamp('2026-13-01', 'YYYY-MM-DD')", "22008"),
        ("SELECT to_date('2026-02-30', 'YYYY-MM-DD')", "22008"),
        ("SELECT to_timestamp('x2026', 'YYYY')", "22007"),
        ("SELECT to_timestamp('2026 Foo 01', 'YYYY Mon DD')", "22007"),
    ] {
        let e = ours.query_one(sql, &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{sql}: {e}");
        let pe = src.query_one(sql, &[]).await.unwrap_err();
        assert_eq!(
            pe.code().map(|c| c.code()),
            Some(code),
            "PostgreSQL {sql}: {pe}"
        );
    }
    let y: i32 = ours
        .query_one(
            "SELECT CAST(date_part('year', to_timestamp('2026-03-01', '%Y-%m-%d')) AS int)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(y, 2026);
    assert!(compared > 20_000, "{compared}");
    println!("to_timestamp/to_date: {compared} texts x templates read as PostgreSQL reads them");
}

#[tokio::test(flavor = "multi_thread")]
async fn to_char_of_intervals_matches_postgresql() {
    let both = Both::start().await;
    let (src, ours) = (&both.pg, &both.ours);
    let mut rng = Lcg(23);
    let mut spans: Vec<String> = [
        "25 hours 3 minutes 4.5 seconds",
        "1 day 2 hours",
        "15 months 3 days",
        "-2 hours -30 minutes",
        "0 seconds",
        "100 hours",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for _ in 0..60 {
        let sign = if rng.next().is_multiple_of(4) {
            "-"
        } else {
            ""
        };
        spans.push(format!(
            "{} months {} days {sign}{} hours {} minutes {}.{:06} seconds",
            rng.next() % 30,
            rng.next() % 40,
            rng.next() % 120,
            rng.next() % 60,
            rng.next() % 60,
            rng.next() % 1_000_000
        ));
    }
    let iv = values(&spans, true);
    let mut compared = 0;
    for t in [
        "HH24:MI:SS",
        "HH:MI:SS",
        "HH12:MI",
        "DD HH24",
        "YYYY-MM-DD",
        "MS US FF3",
        "SSSS",
        "FMHH24:MI",
        "HH24\"h\"MI\"m\"",
    ] {
        let sql = format!(
            "SELECT to_char(CAST(v AS interval), '{t}') FROM (VALUES {iv}) AS x(i, v) ORDER BY i"
        );
        let (want, got) = (rows(src, &sql).await, rows(ours, &sql).await);
        for (k, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "to_char(interval '{}', '{t}')", spans[k]);
        }
        compared += want.len();
    }
    // Names have no meaning for an interval: the same error as PostgreSQL's.
    let sql = "SELECT to_char(CAST('1 day' AS interval), 'Mon')";
    let e = ours.query_one(sql, &[]).await.unwrap_err();
    let pe = src.query_one(sql, &[]).await.unwrap_err();
    assert_eq!(e.code(), pe.code(), "{e} / {pe}");
    println!("to_char(interval): {compared} intervals x templates equal PostgreSQL's");
}
