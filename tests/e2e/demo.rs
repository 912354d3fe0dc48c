//! The demo lake: sizes and consistency the README promises.

use touchlake_tests::Server;

#[tokio::test]
async fn demo_lake_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::demo(dir.path(), 5_000);
    let c = srv.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM unified.touchpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 200_000, "only {n} touchpoints");
    let channels: i64 = c
        .query_one(
            "SELECT count(DISTINCT channel) FROM unified.touchpoints",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(channels >= 8);
    let kinds: i64 = c
        .query_one(
            "SELECT count(DISTINCT channel_type) FROM unified.touchpoints",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(kinds >= 2);
    let persons: i64 = c
        .query_one("SELECT count(*) FROM unified.persons", &[])
        .await
        .unwrap()
        .get(0);
    assert!(persons >= 4_900, "{persons} persons");
    let orphans: i64 = c
        .query_one(
            "SELECT count(*) FROM unified.touchpoints t LEFT JOIN unified.persons p ON t.person_id = p.person_id \
             WHERE t.person_id IS NOT NULL AND p.person_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
    // Each person's activity agrees with its touchpoints (the identity run aggregates
    // it while placing them; this is the SQL over the table it wrote).
    let (matched, mismatched): (i64, i64) = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE p.touchpoints <> t.n OR p.first_seen <> t.f \
             OR p.last_seen <> t.l OR p.channels <> t.ch OR p.orders <> t.o OR p.revenue <> t.r) \
             FROM unified.persons p JOIN (SELECT person_id, count(*) AS n, min(occurred_at) AS f, \
             max(occurred_at) AS l, count(DISTINCT channel) AS ch, \
             count(*) FILTER (WHERE event_type = 'purchase') AS o, \
             coalesce(sum(revenue), 0) AS r FROM unified.touchpoints \
             WHERE person_id IS NOT NULL GROUP BY person_id) t ON p.person_id = t.person_id",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(
        matched > persons / 2,
        "{matched} of {persons} persons have touchpoints"
    );
    assert_eq!(mismatched, 0);
    // The three landing channels went through the pipeline: every run keeps the
    // invariant, bad records are quarantined with a reason, checks were written.
    let runs = c
        .query(
            "SELECT source, rows_read, rows_accepted, rows_rejected, rows_duplicate FROM quality.ingest_runs ORDER BY source",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = runs.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["calls", "pos", "web"]);
    for r in &runs {
        let (read, acc, rej, dup): (i64, i64, i64, i64) = (r.get(1), r.get(2), r.get(3), r.get(4));
        assert_eq!(read, acc + rej + dup, "{}", r.get::<_, String>(0));
        assert!(
            acc > 0 && rej > 0,
            "{}: {acc} accepted, {rej} rejected",
            r.get::<_, String>(0)
        );
    }
    for (t, min) in [
        ("quality.rejected", 1),
        ("quality.checks", 3),
        ("raw.pos", 700),
    ] {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(n >= min, "{t}: {n}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM unified.identity_merges", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no identity run yet");
    // The built-in customer_value mart: one row per person with a purchase, probabilities
    // in [0, 1], revenue equal to the purchases' sum, every person segmented.
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE p_alive < 0 OR p_alive > 1 OR rfm_segment IS NULL), \
                    CAST(round(sum(revenue)) AS bigint), count(*) FILTER (WHERE clv_12m IS NULL) \
             FROM marts.customer_value",
            &[],
        )
        .await
        .unwrap();
    let want = c
        .query_one(
            "SELECT count(DISTINCT person_id), CAST(round(sum(revenue)) AS bigint) FROM unified.touchpoints \
             WHERE event_type = 'purchase' AND person_id IS NOT NULL AND revenue IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let (persons, bad, revenue, no_clv): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(persons > 0);
    assert_eq!((persons, revenue), (want.get(0), want.get(1)));
    assert_eq!((bad, no_clv), (0, 0));
    // channel_attribution: every purchase of a known person is credited in full by every
    // model (its own touch is always eligible), and the shares of a model add up to 1.
    let purchases: i64 = c
        .query_one(
            "SELECT count(*) FROM unified.touchpoints WHERE event_type = 'purchase' AND person_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let models = c
        .query(
            "SELECT model, sum(conversions), sum(share) FROM marts.channel_attribution GROUP BY model ORDER BY model",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(models.len(), 6);
    for m in &models {
        let (model, conversions, share): (String, f64, f64) = (m.get(0), m.get(1), m.get(2));
        assert!(
            (conversions - purchases as f64).abs() < 1e-6,
            "{model}: {conversions}"
        );
        assert!((share - 1.0).abs() < 1e-9, "{model}: {share}");
    }
    // A join filter's one-sided parts are computed below the join (the optimizer rule
    // shows in the plan), and the answers equal the spelled-out form, for inner and outer
    // joins.
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT count(*) FROM unified.touchpoints p JOIN unified.touchpoints t \
             ON t.person_id = p.person_id AND t.occurred_at >= p.occurred_at - INTERVAL '30 days'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(1))
        .collect();
    assert!(
        plan.iter().any(|p| p.contains("__touchlake_join_expr_")),
        "{plan:?}"
    );
    for (rewritten, spelled_out) in [
        (
            "SELECT count(*) FROM unified.touchpoints p JOIN unified.touchpoints t \
             ON t.person_id = p.person_id AND t.occurred_at >= p.occurred_at - INTERVAL '30 days' \
             AND t.occurred_at <= p.occurred_at WHERE p.event_type = 'purchase'",
            "SELECT count(*) FROM (SELECT *, occurred_at - INTERVAL '30 days' AS lo FROM unified.touchpoints) p \
             JOIN unified.touchpoints t ON t.person_id = p.person_id AND t.occurred_at >= p.lo \
             AND t.occurred_at <= p.occurred_at WHERE p.event_type = 'purchase'",
        ),
        (
            "SELECT count(*) * 1000000 + count(t.person_id) FROM unified.touchpoints p \
             LEFT JOIN unified.touchpoints t ON t.person_id = p.person_id \
             AND t.occurred_at >= p.occurred_at - INTERVAL '1 day' \
             AND t.channel || 'x' = p.channel || 'x' AND t.touchpoint_id <> p.touchpoint_id",
            "SELECT count(*) * 1000000 + count(t.person_id) FROM \
             (SELECT *, occurred_at - INTERVAL '1 day' AS lo, channel || 'x' AS cx FROM unified.touchpoints) p \
             LEFT JOIN (SELECT *, channel || 'x' AS cx FROM unified.touchpoints) t \
             ON t.person_id = p.person_id AND t.occurred_at >= p.lo AND t.cx = p.cx \
             AND t.touchpoint_id <> p.touchpoint_id",
        ),
    ] {
        let a: i64 = c.query_one(rewritten, &[]).await.unwrap().get(0);
        let b: i64 = c.query_one(spelled_out, &[]).await.unwrap().get(0);
        assert_eq!(a, b, "{rewritten}");
        assert!(a > 0);
    }
}
