//! Every SQL example in the README and docs/functions.md runs against the demo lake.

use touchlake_tests::Server;

fn sql_blocks(file: &str) -> Vec<String> {
    let path = touchlake_tests::repo_root().join(file);
    let text = std::fs::read_to_string(&path).expect("read docs");
    let mut blocks = vec![];
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sql") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap_or_default()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[tokio::test]
async fn documented_sql_examples_run() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::demo(dir.path(), 500);
    let c = srv.connect().await;
    let mut ran = 0;
    for file in ["README.md", "docs/functions.md"] {
        for block in sql_blocks(file) {
            c.simple_query(&block)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}\n{block}"));
            ran += 1;
        }
    }
    assert!(ran >= 3, "only {ran} SQL blocks found");
    let v: i32 = c
        .query_one("SELECT to_regtype('int8')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 20);
}
