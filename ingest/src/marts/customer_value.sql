-- marts.customer_value: per person, the lifetimes summary of their purchases, BG/NBD P(alive) and
-- expected purchases, 12-month CLV (Gamma-Gamma spend, 1%/month discount) and the RFM segment.
-- Fitted on every query over unified.touchpoints (docs/functions.md, "Lifetime value").
WITH purchases AS (
  SELECT person_id, occurred_at, revenue FROM unified.touchpoints
  WHERE event_type = 'purchase' AND person_id IS NOT NULL AND revenue IS NOT NULL),
ends AS (SELECT max(occurred_at) AS observation_end FROM unified.touchpoints),
summary AS (
  SELECT p.person_id,
         rfm_summary(p.occurred_at, p.revenue, e.observation_end) AS s,
         rfm_summary(p.occurred_at, p.revenue, e.observation_end, 'include_first=true') AS all_tx
  FROM purchases p CROSS JOIN ends e GROUP BY p.person_id),
models AS (
  SELECT bgnbd_fit(s['frequency'], s['recency'], s['T'], 1, 0.001) AS bg,
         gamma_gamma_fit(s['frequency'], s['monetary_value']) AS gg
  FROM summary),
scored AS (
  SELECT person_id, s, all_tx,
         rfm_score(all_tx['T'] - all_tx['recency'], all_tx['frequency'], all_tx['monetary_value']) OVER () AS rfm
  FROM summary)
SELECT c.person_id,
       c.s['frequency'] AS frequency, c.s['recency'] AS recency, c.s['T'] AS t,
       c.s['monetary_value'] AS monetary_value,
       c.all_tx['frequency'] * c.all_tx['monetary_value'] AS revenue,
       bgnbd_p_alive(m.bg, c.s['frequency'], c.s['recency'], c.s['T']) AS p_alive,
       bgnbd_expected_purchases(m.bg, 30, c.s['frequency'], c.s['recency'], c.s['T']) AS expected_purchases_30d,
       clv_predict(m.bg, m.gg, c.s['frequency'], c.s['recency'], c.s['T'], c.s['monetary_value'], 12, 0.01, 'D') AS clv_12m,
       c.rfm['code'] AS rfm_code,
       rfm_segment(c.rfm['code']) AS rfm_segment
FROM scored c CROSS JOIN models m
