//! Ingest end to end: sources defined over SQL and as TOML files, messy CSV (GBK) and
//! NDJSON landing files, exact quarantine counts, the read = accepted + rejected +
//! duplicate invariant, idempotent reruns, and kill -9 at random points during
//! `touchlake ingest` followed by a rerun that must equal a clean run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use touchlake_tests::{Server, binary, psql};

/// A small deterministic generator (no test may depend on the clock for its data).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Phone spellings of the same CN mobile number `138001380NN`.
fn phone(n: u64, style: u64) -> String {
    let d = format!("138001380{:02}", n % 100);
    match style % 7 {
        0 => d.clone(),
        1 => format!("{} {} {}", &d[..3], &d[3..7], &d[7..]),
        2 => format!("{}-{}-{}", &d[..3], &d[3..7], &d[7..]),
        3 => format!("+86 {d}"),
        4 => format!("0086{d}"),
        5 => format!("(+86) {d}"),
        _ => d
            .chars()
            .map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).unwrap_or(c))
            .collect(),
    }
}

/// What the generator put into a POS file, counted independently of Touchlake.
#[derive(Default, Debug, Clone, Copy)]
struct Expect {
    read: u64,
    good: u64,
    bad: u64,
    dup: u64,
}

/// A GBK-encoded POS export with Chinese headers and realistic mess.
fn pos_file(rng: &mut Lcg, first_order: u64, rows: u64, exp: &mut Expect) -> Vec<u8> {
    let mut text = String::from("订单号,下单时间,状态,手机,金额,门店\n");
    let mut last_good: Option<String> = None;
    for i in 0..rows {
        let order = first_order + i;
        exp.read += 1;
        let kind = rng.below(20);
        let line = match kind {
            0 => {
                exp.bad += 1;
                format!(
                    "{order},31/02/2024 25:00,paid,{},12.00,上海一店",
                    phone(order, 0)
                )
            }
            1 => {
                exp.bad += 1;
                format!(
                    "{order},2024-03-01 10:00:00,paid,{},12x,上海一店",
                    phone(order, 1)
                )
            }
            2 => {
                exp.bad += 1;
                format!("{order},2024-03-01 10:00:00,paid,{}", phone(order, 2))
            }
            3 if last_good.is_some() => {
                exp.dup += 1;
                last_good.clone().unwrap_or_default()
            }
            _ => {
                exp.good += 1;
                let ts = match rng.below(3) {
                    0 => format!(
                        "2024-03-{:02} {:02}:{:02}:00",
                        1 + order % 28,
                        order % 24,
                        order % 60
                    ),
                    1 => format!(
                        "2024/03/{:02} {:02}:{:02}",
                        1 + order % 28,
                        order % 24,
                        order % 60
                    ),
                    _ => format!("{}", 1_709_258_400 + order * 37),
                };
                let amount = match rng.below(3) {
                    0 => format!("\"{},{:03}.50\"", 1 + order % 9, order % 1000),
                    1 => format!("{}.00", order % 500),
                    _ => format!("{}", order % 90),
                };
                let status = if rng.below(10) == 0 { "refund" } else { "paid" };
                let l = format!(
                    "{order},{ts},{status},{},{amount},{}",
                    phone(order, rng.below(7)),
                    ["上海一店", "北京二店", "深圳三店"][(order % 3) as usize]
                );
                last_good = Some(l.clone());
                l
            }
        };
        text.push_str(&line);
        text.push('\n');
    }
    gbk(&text)
}

/// GBK bytes of `text`, through iconv (glibc's, independent of the decoder under test).
fn gbk(text: &str) -> Vec<u8> {
    let mut child = Command::new("iconv")
        .args(["-f", "UTF-8", "-t", "GBK"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("iconv");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("iconv output");
    assert!(out.status.success(), "iconv failed");
    out.stdout
}

const POS_TOML: &str = r#"
name = "pos"
kind = "files"
channel = "store_pos"
channel_type = "offline"
path = "landing/pos/*.csv"
natural_key = ['"订单号"']
currency = "CNY"
batch_rows = 250

[format]
type = "csv"
encoding = "gbk"
timezone = "Asia/Shanghai"

[mapping]
occurred_at = '"下单时间"'
event_type = """CASE "状态" WHEN 'paid' THEN 'purchase' WHEN 'refund' THEN 'refund' END"""
phone = """phone_e164("手机", 'CN')"""
revenue = """CASE "状态" WHEN 'refund' THEN -1 ELSE 1 END * replace("金额", ',', '')::decimal(18,2)"""
store_id = '"门店"'
"#;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn run_ingest(lake: &Path, sources: &Path) -> std::process::Output {
    Command::new(binary())
        .args(["ingest", "--lake"])
        .arg(lake)
        .arg("--sources")
        .arg(sources)
        .output()
        .expect("run touchlake ingest")
}

async fn counts(c: &tokio_postgres::Client, source: &str) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT sum(rows_read)::bigint, sum(rows_accepted)::bigint, sum(rows_rejected)::bigint, \
             sum(rows_duplicate)::bigint FROM quality.ingest_runs WHERE source = $1",
            &[&source],
        )
        .await
        .expect("ingest_runs");
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test(flavor = "multi_thread")]
async fn file_sources_quarantine_and_rerun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let sources = dir.path().join("sources");
    write(&sources.join("pos.toml"), POS_TOML.as_bytes());
    let mut rng = Lcg(7);
    let mut exp = Expect::default();
    write(
        &lake.join("landing/pos/2024-03-01.csv"),
        &pos_file(&mut rng, 1000, 400, &mut exp),
    );
    // NDJSON web events with a truncated line and a non-object line.
    let web = "{\"id\":\"w1\",\"ts\":\"2024-03-01T02:00:00Z\",\"event\":\"page_view\",\"email\":\" Ann@Example.COM \",\"utm\":\"spring\"}\n\
               {\"id\":\"w2\",\"ts\":\"2024-03-01T02:05:00+08:00\",\"event\":\"purchase\",\"email\":\"ann@example.com\",\"amount\":\"99.90\"}\n\
               {\"id\":\"w3\",\"ts\":\"2024-03-01T02:\n\
               [1,2]\n\
               {\"id\":\"w4\",\"ts\":\"2024-03-01T03:00:00Z\",\"event\":\"page_view\",\"email\":\"null\"}\n";
    write(&lake.join("landing/web/a.ndjson"), web.as_bytes());

    // 1. The TOML source through the CLI.
    let out = run_ingest(&lake, &sources);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pos") && stdout.contains("accepted"),
        "{stdout}"
    );

    let server = Server::start(&lake);
    let c = server.connect().await;
    let (read, acc, rej, dup) = counts(&c, "pos").await;
    assert_eq!(read as u64, exp.read, "{exp:?}");
    assert_eq!(rej as u64, exp.bad, "{exp:?}");
    assert_eq!(dup as u64, exp.dup, "{exp:?}");
    assert_eq!(acc as u64, exp.good, "{exp:?}");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM unified.touchpoints WHERE source = 'pos'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n as u64, exp.good);
    // Every phone spelling normalised to the same E.164 number; times read in Shanghai.
    let bad_phones: i64 = c
        .query_one(
            "SELECT count(*) FROM unified.touchpoints WHERE source = 'pos' AND phone NOT LIKE '+8613800138___'",
            &[],
        )
        .await
        .expect("phones")
        .get(0);
    assert_eq!(bad_phones, 0);
    let row = c
        .query_one(
            "SELECT occurred_at::text, revenue::text, store_id FROM unified.touchpoints \
             WHERE source = 'pos' ORDER BY occurred_at LIMIT 1",
            &[],
        )
        .await
        .expect("row");
    let store: String = row.get(2);
    assert!(store.ends_with('店'), "GBK decoded: {store}");
    let reasons = c
        .query(
            "SELECT reason, count(*) FROM quality.rejected WHERE source = 'pos' GROUP BY reason ORDER BY reason",
            &[],
        )
        .await
        .expect("reasons");
    let text: Vec<String> = reasons
        .iter()
        .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("expected 6 fields, found 4=")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("occurred_at: cannot parse '31/02/2024 25:00'")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("cannot parse '12x' as decimal(18,2)")),
        "{text:?}"
    );
    let loc: String = c
        .query_one(
            "SELECT min(location) FROM quality.rejected WHERE source = 'pos'",
            &[],
        )
        .await
        .expect("location")
        .get(0);
    assert!(loc.starts_with("landing/pos/2024-03-01.csv:"), "{loc}");

    // 2. A source over SQL, run with CALL, and its round trip through SHOW CREATE SOURCE.
    let create = "CREATE SOURCE web WITH (kind = 'files', channel = 'web', channel_type = 'online', \
        path = 'landing/web/*.ndjson', format.type = 'ndjson', natural_key = ARRAY['id'], \
        mapping.occurred_at = 'ts', mapping.event_type = 'event', \
        mapping.email = 'id_clean(''email'', email_canonical(email))', \
        mapping.revenue = 'amount::decimal(18,2)', \
        rules.1.column = 'email', rules.1.not_null = true, rules.1.reason = 'no usable e-mail')";
    c.batch_execute(create).await.expect("create source");
    let shown: String = c
        .query_one("SHOW CREATE SOURCE web", &[])
        .await
        .expect("show create")
        .get(0);
    c.batch_execute("DROP SOURCE web").await.expect("drop");
    c.batch_execute(&shown)
        .await
        .expect("re-create from SHOW CREATE SOURCE");
    let shown_again: String = c
        .query_one("SHOW CREATE SOURCE web", &[])
        .await
        .expect("show create")
        .get(0);
    assert_eq!(shown, shown_again);
    let rows = c
        .query("CALL ingest('web')", &[])
        .await
        .expect("call ingest");
    assert_eq!(rows.len(), 1);
    let (read, acc, rej, dup): (i64, i64, i64, i64) = (
        rows[0].get("rows_read"),
        rows[0].get("rows_accepted"),
        rows[0].get("rows_rejected"),
        rows[0].get("rows_duplicate"),
    );
    assert_eq!((read, acc, rej, dup), (5, 2, 3, 0));
    let emails: Vec<String> = c
        .query(
            "SELECT email FROM unified.touchpoints WHERE source = 'web' ORDER BY occurred_at",
            &[],
        )
        .await
        .expect("emails")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(emails, vec!["ann@example.com", "ann@example.com"]);
    let props: Option<String> = c
        .query_one("SELECT properties FROM unified.touchpoints WHERE source = 'web' AND event_type = 'page_view'", &[])
        .await
        .expect("properties")
        .get(0);
    assert_eq!(props.as_deref(), Some("{\"utm\":\"spring\"}"));

    // 3. Rerun: nothing new. A new file: only it. A changed file: its old rows are duplicates.
    let rows = c.query("CALL ingest('web')", &[]).await.expect("rerun");
    assert_eq!(rows[0].get::<_, i64>("rows_read"), 0);
    write(
        &lake.join("landing/web/a.ndjson"),
        format!("{web}{{\"id\":\"w5\",\"ts\":\"2024-03-02T03:00:00Z\",\"event\":\"login\",\"email\":\"bo@example.com\"}}\n").as_bytes(),
    );
    let rows = c
        .query("CALL ingest('web')", &[])
        .await
        .expect("changed file");
    let got: (i64, i64, i64, i64) = (
        rows[0].get("rows_read"),
        rows[0].get("rows_accepted"),
        rows[0].get("rows_rejected"),
        rows[0].get("rows_duplicate"),
    );
    assert_eq!(got, (6, 1, 3, 2));
    // The invariant holds for every run ever recorded.
    let broken: i64 = c
        .query_one(
            "SELECT count(*) FROM quality.ingest_runs WHERE rows_read <> rows_accepted + rows_rejected + rows_duplicate",
            &[],
        )
        .await
        .expect("invariant")
        .get(0);
    assert_eq!(broken, 0);
    // Bad definitions and names get PostgreSQL errors.
    let e = c
        .batch_execute("CREATE SOURCE bad WITH (kind = 'files', channel = 'x')")
        .await
        .expect_err("incomplete definition");
    assert_eq!(e.code().map(|c| c.code()), Some("22023"), "{e}");
    let e = c
        .query("CALL ingest('nope')", &[])
        .await
        .expect_err("unknown source");
    assert_eq!(e.code().map(|c| c.code()), Some("42704"), "{e}");
    let e = c
        .batch_execute("CREATE SOURCE web WITH (kind = 'files', channel = 'web', channel_type = 'online', path = 'x/*.csv', natural_key = ARRAY['id'], mapping.occurred_at = 'ts', mapping.event_type = 'e')")
        .await
        .expect_err("exists");
    assert_eq!(e.code().map(|c| c.code()), Some("42710"), "{e}");
    // psql sees the new tables, and OPTIMIZE compacts the many small commits.
    let (out, err, ok) = psql(&server.url(), &["-c", "\\dt raw.*"]);
    assert!(
        ok && out.contains("pos") && out.contains("web"),
        "{out}{err}"
    );
    let before: i64 = c
        .query_one("SELECT count(*) FROM unified.touchpoints", &[])
        .await
        .expect("count")
        .get(0);
    let r = c
        .query_one("OPTIMIZE unified.touchpoints", &[])
        .await
        .expect("optimize");
    assert!(
        r.get::<_, i64>("files_removed") > 1,
        "several batches were compacted"
    );
    let after: i64 = c
        .query_one("SELECT count(*) FROM unified.touchpoints", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(before, after);
}

/// Rows of a query as sorted text lines, for comparing two lakes.
async fn snapshot(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let msgs = c.simple_query(sql).await.expect("snapshot query");
    let mut out: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

const COMPARE: &[&str] = &[
    "SELECT touchpoint_id, occurred_at, channel, event_type, source, phone, store_id, revenue, currency, properties FROM unified.touchpoints",
    "SELECT source, location, raw, reason FROM quality.rejected",
    "SELECT \"订单号\", \"下单时间\", \"状态\", \"手机\", \"金额\", \"门店\", _source, _location FROM raw.pos",
    "SELECT source, path, size, content_hash, rows_read FROM quality.ingest_files",
];

/// The crashed lake, after a final uninterrupted run, must equal the clean one.
async fn assert_same_as_clean(
    clean: &tokio_postgres::Client,
    crashed: &Path,
    sources: &Path,
    good: u64,
) {
    let out = run_ingest(crashed, sources);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = Server::start(crashed);
    let cb = b.connect().await;
    for q in COMPARE {
        let (x, y) = (snapshot(clean, q).await, snapshot(&cb, q).await);
        assert_eq!(x.len(), y.len(), "{q}");
        assert!(x == y, "tables differ after crashes: {q}");
    }
    let n = snapshot(&cb, "SELECT count(*) FROM unified.touchpoints").await;
    assert_eq!(n, vec![good.to_string()]);
    let broken = snapshot(
        &cb,
        "SELECT count(*) FROM quality.ingest_runs WHERE rows_read <> rows_accepted + rows_rejected + rows_duplicate",
    )
    .await;
    assert_eq!(broken, vec!["0".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_then_rerun_equals_clean_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = dir.path().join("sources");
    write(&sources.join("pos.toml"), POS_TOML.as_bytes());
    let clean = dir.path().join("clean");
    let crashed = dir.path().join("crashed");
    let mut rng = Lcg(11);
    let mut exp = Expect::default();
    let mut files = vec![];
    for f in 0..6u64 {
        let bytes = pos_file(&mut rng, 10_000 * (f + 1), 600, &mut exp);
        write(&clean.join(format!("landing/pos/f{f}.csv")), &bytes);
        files.push(bytes);
    }
    let fresh = |lake: &Path| {
        let _ = std::fs::remove_dir_all(lake);
        for (f, bytes) in files.iter().enumerate() {
            write(&lake.join(format!("landing/pos/f{f}.csv")), bytes);
        }
    };
    fresh(&crashed);
    let t0 = Instant::now();
    let out = run_ingest(&clean, &sources);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clean_time = t0.elapsed();
    let a = Server::start(&clean);
    let ca = a.connect().await;

    // Kill -9 at random points of a run; each restart resumes where the last one died.
    // When a run gets to the end before its kill, that round's lake is checked against
    // the clean one and the next round starts from an empty lake. 22 kills in all.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("kill points seed {seed}, clean run {clean_time:?}");
    let mut kill_rng = Lcg(seed);
    let span = clean_time.as_millis().max(50) as u64;
    let (mut kills, mut rounds, mut kills_this_round) = (0, 0, 0);
    for _ in 0..200 {
        if kills >= 22 {
            break;
        }
        let mut child = Command::new(binary())
            .args(["ingest", "--lake"])
            .arg(&crashed)
            .arg("--sources")
            .arg(&sources)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ingest");
        std::thread::sleep(Duration::from_millis(kill_rng.below(span)));
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            kills += 1;
            kills_this_round += 1;
            let _ = child.wait();
        } else {
            let _ = child.wait();
            if kills_this_round > 0 {
                assert_same_as_clean(&ca, &crashed, &sources, exp.good).await;
                rounds += 1;
            }
            kills_this_round = 0;
            fresh(&crashed);
        }
    }
    eprintln!(
        "{kills} runs killed with SIGKILL, {rounds} rounds completed and compared before the last"
    );
    assert!(kills >= 22, "only {kills} kills landed during a run");
    assert_same_as_clean(&ca, &crashed, &sources, exp.good).await;
}
