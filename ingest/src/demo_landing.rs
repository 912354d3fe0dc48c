//! The demo's landing files and the source definitions that ingest them — the examples
//! the README documents. Three channels with the mess real exports have:
//!
//! - `pos`: a store POS export, GBK-encoded CSV with Chinese headers, phones in seven
//!   spellings, amounts with thousands separators, local (Asia/Shanghai) times in three
//!   formats, and some malformed rows (impossible dates, non-numeric amounts, missing
//!   fields, repeated lines);
//! - `web`: web events as NDJSON with a truncated line, an unparseable timestamp and
//!   junk identifiers;
//! - `calls`: a call-center export, UTF-8 with BOM, `;`-separated, durations in seconds.
//!
//! The files go under `<lake>/_landing/` (folders starting with `_` are not schemas).

use object_store::ObjectStoreExt;
use touchlake_catalog::Lake;

use crate::demo::Rng;
use crate::error::Result;
use crate::run::{RunSummary, run_source};
use crate::source::{self, SourceDef};

/// The POS source, as documented in the README.
pub const POS_TOML: &str = r#"name = "pos"
kind = "files"
channel = "store_pos"
channel_type = "offline"
path = "_landing/pos/*.csv"
natural_key = ["订单号"]
currency = "CNY"

[format]
type = "csv"
encoding = "gbk"
timezone = "Asia/Shanghai"
timestamp_format = "%Y/%m/%d %H:%M|%Y年%m月%d日 %H:%M"

[mapping]
occurred_at = "下单时间"
event_type = "CASE 状态 WHEN '已支付' THEN 'purchase' WHEN '已退款' THEN 'refund' END"
phone = "phone_e164(手机, 'CN')"
member_id = "id_clean('member_id', 会员卡号)"
revenue = "CASE 状态 WHEN '已退款' THEN -1 ELSE 1 END * replace(金额, ',', '')::decimal(18,2)"
store_id = "门店"

[[rules]]
column = "event_type"
not_null = true
reason = "unknown order status"

[[rules]]
column = "revenue"
min = -50000.0
max = 50000.0
reason = "amount out of range"
"#;

/// The web events source.
pub const WEB_TOML: &str = r#"name = "web"
kind = "files"
channel = "web"
channel_type = "online"
path = "_landing/web/*.ndjson"
natural_key = ["event_id"]

[format]
type = "ndjson"

[mapping]
occurred_at = "ts"
event_type = "CASE event WHEN 'view' THEN 'page_view' WHEN 'cart' THEN 'add_to_cart' WHEN 'pay_success' THEN 'purchase' ELSE event END"
anonymous_id = "id_clean('anonymous_id', cookie)"
email = "email_canonical(email)"
campaign = "utm_campaign"
content = "url"
revenue = "CAST(value AS decimal(18,2))"
currency = "upper(currency)"

[[rules]]
column = "event_type"
accepted_values = ["page_view", "add_to_cart", "purchase", "search"]
"#;

/// The call-center source.
pub const CALLS_TOML: &str = r#"name = "calls"
kind = "files"
channel = "call_center"
channel_type = "offline"
path = "_landing/calls/*.csv"
natural_key = ["call_id"]

[format]
type = "csv"
delimiter = ";"
timezone = "Asia/Shanghai"

[mapping]
occurred_at = "start_time"
event_type = "CASE WHEN topic = 'complaint' THEN 'complaint' ELSE 'service_call' END"
phone = "phone_e164(caller, 'CN')"
duration_ms = "CAST(seconds AS bigint) * 1000"
content = "topic"
score = "CAST(csat AS integer)"

[[rules]]
column = "score"
min = 1.0
max = 5.0
reason = "CSAT is 1-5"
"#;

fn phone(rng: &mut Rng, n: u64) -> String {
    let d = format!("1{}{:09}", 30 + rng.below(60), n % 1_000_000_000)[..11].to_string();
    match rng.below(8) {
        0 => d,
        1 => format!("{} {} {}", &d[..3], &d[3..7], &d[7..]),
        2 => format!("{}-{}-{}", &d[..3], &d[3..7], &d[7..]),
        3 => format!("+86 {d}"),
        4 => format!("0086{d}"),
        5 => format!("(+86) {d}"),
        6 => "00000000000".into(),
        _ => d
            .chars()
            .map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).unwrap_or(c))
            .collect(),
    }
}

fn pos_csv(rng: &mut Rng, day: u64, rows: u64) -> String {
    let mut s = String::from("订单号,下单时间,状态,手机,会员卡号,金额,门店\n");
    let mut last = String::new();
    for i in 0..rows {
        let order = format!("P{day:02}{i:05}");
        let (h, m) = (9 + rng.below(12), rng.below(60));
        let time = match rng.below(3) {
            0 => format!("2026-03-{day:02} {h:02}:{m:02}:00"),
            1 => format!("2026/03/{day:02} {h:02}:{m:02}"),
            _ => format!("2026年03月{day:02}日 {h:02}:{m:02}"),
        };
        let status = if rng.below(15) == 0 {
            "已退款"
        } else {
            "已支付"
        };
        let amount = 20 + rng.below(3000);
        let amount = if amount >= 1000 {
            format!(
                "\"{},{:03}.{:02}\"",
                amount / 1000,
                amount % 1000,
                rng.below(100)
            )
        } else {
            format!("{amount}.{:02}", rng.below(100))
        };
        let member = if rng.below(2) == 0 {
            format!("M{:09}", rng.below(5000))
        } else {
            String::new()
        };
        let store = ["上海一店", "上海二店", "北京三里屯", "杭州西湖"][rng.below(4) as usize];
        let line = match rng.below(40) {
            0 => format!(
                "{order},2026-02-31 25:00:00,{status},{},{member},{amount},{store}",
                phone(rng, i)
            ),
            1 => format!(
                "{order},{time},{status},{},{member},12x.00,{store}",
                phone(rng, i)
            ),
            2 => format!("{order},{time},{status},{}", phone(rng, i)),
            3 => format!(
                "{order},{time},挂单,{},{member},{amount},{store}",
                phone(rng, i)
            ),
            4 if !last.is_empty() => last.clone(),
            _ => format!(
                "{order},{time},{status},{},{member},{amount},{store}",
                phone(rng, i)
            ),
        };
        last = line.clone();
        s.push_str(&line);
        s.push('\n');
    }
    s
}

fn web_ndjson(rng: &mut Rng, part: u64, rows: u64) -> String {
    let mut s = String::new();
    for i in 0..rows {
        let id = format!("w{part}-{i:05}");
        let event =
            ["view", "view", "view", "cart", "search", "pay_success"][rng.below(6) as usize];
        let cookie = match rng.below(20) {
            0 => "anonymous".to_string(),
            1 => "-1".to_string(),
            _ => format!("ck-{:06x}", rng.below(4000)),
        };
        let ts = match rng.below(50) {
            0 => "yesterday-ish".to_string(),
            _ => format!(
                "2026-03-{:02}T{:02}:{:02}:{:02}+08:00",
                1 + part,
                rng.below(24),
                rng.below(60),
                rng.below(60)
            ),
        };
        let email = match rng.below(4) {
            0 => format!(",\"email\":\"  User{}@Example.COM \"", rng.below(4000)),
            _ => String::new(),
        };
        let value = if event == "pay_success" {
            format!(
                ",\"value\":{}.{:02},\"currency\":\"cny\"",
                10 + rng.below(900),
                rng.below(100)
            )
        } else {
            String::new()
        };
        let line = format!(
            "{{\"event_id\":\"{id}\",\"ts\":\"{ts}\",\"event\":\"{event}\",\"cookie\":\"{cookie}\",\"url\":\"/p/{}\",\"utm_campaign\":\"spring_sale\"{email}{value}}}",
            rng.below(50)
        );
        if rng.below(100) == 0 {
            s.push_str(&line[..line.len() / 2]); // a truncated line
        } else {
            s.push_str(&line);
        }
        s.push('\n');
    }
    s
}

fn calls_csv(rng: &mut Rng, rows: u64) -> Vec<u8> {
    let mut s = String::from("\u{feff}call_id;start_time;caller;seconds;topic;csat\n");
    for i in 0..rows {
        let csat = match rng.below(12) {
            0 => "9".to_string(),
            1 => String::new(),
            _ => (1 + rng.below(5)).to_string(),
        };
        let topic = ["delivery", "refund", "complaint", "membership"][rng.below(4) as usize];
        s.push_str(&format!(
            "C{i:05};2026-03-{:02} {:02}:{:02}:00;{};{};{topic};{csat}\n",
            1 + rng.below(28),
            8 + rng.below(12),
            rng.below(60),
            phone(rng, 7000 + i),
            30 + rng.below(900)
        ));
    }
    s.into_bytes()
}

/// Write the landing files, save the three definitions and ingest them.
pub async fn ingest_demo_channels(lake: &Lake, seed: u64) -> Result<Vec<RunSummary>> {
    let mut rng = Rng(seed ^ 0x1a2d_1a2d);
    let store = lake.store();
    let put = |parts: Vec<String>, bytes: Vec<u8>| {
        let store = store.clone();
        let parts: Vec<String> = parts;
        let path = lake.path(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        async move {
            store
                .put(&path, object_store::PutPayload::from(bytes))
                .await
                .map(|_| ())
        }
    };
    for day in 1..=2u64 {
        let text = pos_csv(&mut rng, day, 400);
        let (gbk, _, _) = encoding_rs::GBK.encode(&text);
        put(
            vec![
                "_landing".into(),
                "pos".into(),
                format!("2026-03-{day:02}.csv"),
            ],
            gbk.into_owned(),
        )
        .await?;
        put(
            vec![
                "_landing".into(),
                "web".into(),
                format!("events-{day}.ndjson"),
            ],
            web_ndjson(&mut rng, day, 600).into_bytes(),
        )
        .await?;
    }
    put(
        vec![
            "_landing".into(),
            "calls".into(),
            "calls-2026-03.csv".into(),
        ],
        calls_csv(&mut rng, 300),
    )
    .await?;
    let mut runs = vec![];
    for toml in [POS_TOML, WEB_TOML, CALLS_TOML] {
        let def = SourceDef::from_toml(toml)?;
        source::save(lake, &def, true).await?;
        runs.push(run_source(lake, &def, &|_| {}).await?);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demo_definitions_parse_and_plan() {
        for t in [POS_TOML, WEB_TOML, CALLS_TOML] {
            let d = SourceDef::from_toml(t).unwrap();
            crate::run::check_definition(&d).await.unwrap();
            assert_eq!(SourceDef::from_toml(&d.to_toml().unwrap()).unwrap(), d);
        }
        let bad = CALLS_TOML.replace("CAST(seconds AS bigint) * 1000", "no_such_fn(seconds)");
        let d = SourceDef::from_toml(&bad).unwrap();
        let e = crate::run::check_definition(&d).await.unwrap_err();
        assert!(e.to_string().contains("no_such_fn"), "{e}");
    }

    #[test]
    fn readme_documents_these_definitions() {
        let readme = std::fs::read_to_string(readme_path()).unwrap();
        for t in [POS_TOML, WEB_TOML, CALLS_TOML] {
            assert!(readme.contains(t), "README lacks the definition:\n{t}");
        }
    }

    /// The README at the root of the clone the test runs in (`CARGO_MANIFEST_DIR` is set
    /// by `cargo test` at run time; the compile-time value is the fallback).
    fn readme_path() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("../README.md")
    }
}
