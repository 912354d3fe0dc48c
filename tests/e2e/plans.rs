//! Plan rewrites of ours (logical and physical): each must keep the answers.

use touchlake_tests::Server;

/// The plan of `sql` (logical and physical), as one text.
async fn plan(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(1))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn counts_beside_a_distinct_count_keep_their_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    c.batch_execute(
        "CREATE TABLE v (channel text, person text, n int);
         INSERT INTO v VALUES ('app', 'p1', 1), ('app', 'p1', NULL), ('app', 'p2', 3),
           ('app', NULL, 4), ('web', 'p1', NULL), ('web', NULL, NULL), ('sms', NULL, 7)",
    )
    .await
    .unwrap();
    let sql = "SELECT channel, count(*) AS pv, count(n) AS with_n, count(DISTINCT person) AS uv, \
               max(n) AS top FROM v GROUP BY channel ORDER BY channel";
    let rows = c.query(sql, &[]).await.unwrap();
    let got: Vec<(String, i64, i64, i64, Option<i32>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    // PostgreSQL's answers, worked out by hand.
    assert_eq!(
        got,
        vec![
            ("app".into(), 4, 3, 2, Some(4)),
            ("sms".into(), 1, 1, 0, Some(7)),
            ("web".into(), 2, 0, 1, None),
        ]
    );
    // The types a client sees stay bigint.
    assert_eq!(
        rows[0].columns()[1].type_(),
        &tokio_postgres::types::Type::INT8
    );
    // It ran as two groupings (DataFusion's distinct rewrite, which names its inner column
    // `alias1`), not a set of persons per channel.
    assert!(
        plan(&c, sql).await.contains("alias1"),
        "{}",
        plan(&c, sql).await
    );
    // No rows at all: counts are 0, not NULL.
    let r = c
        .query_one(
            "SELECT count(*), count(n), count(DISTINCT person) FROM v WHERE channel = 'none'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn aggregates_keeping_every_row_run_in_one_phase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(dir.path());
    let c = srv.connect().await;
    // Enough partitions for DataFusion to aggregate in two phases on any machine.
    c.batch_execute(
        "SET datafusion.execution.target_partitions = 4;
         CREATE TABLE ev (person text, t bigint, kind text);
         INSERT INTO ev VALUES ('a', 3, 'buy'), ('b', 1, 'view'), ('a', 1, 'view'),
           ('c', 5, 'view'), ('a', 2, 'cart'), ('b', 2, 'buy'), (NULL, 1, 'view')",
    )
    .await
    .unwrap();
    let lists = "SELECT person, array_to_string(array_sort(array_agg(t)), '>') AS times, \
                 window_funnel(10, t, kind = 'view', kind = 'cart', kind = 'buy') AS level, \
                 count(*) AS n FROM ev GROUP BY person ORDER BY person";
    let got: Vec<(Option<String>, String, i16, i64)> = c
        .query(lists, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("a".into()), "1>2>3".into(), 3, 3),
            (Some("b".into()), "1>2".into(), 1, 2),
            (Some("c".into()), "5".into(), 1, 1),
            (None, "1".into(), 1, 1),
        ]
    );
    // The lists are built once, from rows partitioned by person; a plain sum keeps
    // DataFusion's two phases.
    let p = plan(&c, lists).await;
    assert!(p.contains("mode=SinglePartitioned"), "{p}");
    assert!(!p.contains("mode=Partial"), "{p}");
    let p = plan(&c, "SELECT person, sum(t) FROM ev GROUP BY person").await;
    assert!(p.contains("mode=Partial"), "{p}");
    // An aggregate asking for sorted rows keeps them too (a new partitioning loses order).
    let ordered = "SELECT person, array_agg(kind ORDER BY t) FROM ev GROUP BY person";
    let p = plan(&c, ordered).await;
    assert!(!p.contains("mode=SinglePartitioned"), "{p}");
}
