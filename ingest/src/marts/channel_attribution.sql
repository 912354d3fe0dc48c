-- marts.channel_attribution: for each rule-based model, each channel's share of the purchases in
-- unified.touchpoints (touches of the same person in the 30 days up to each purchase, the
-- purchase included) and of their revenue. Filter on model: WHERE model = 'time_decay'.
WITH conversions AS (
  SELECT touchpoint_id AS conversion_id, person_id, occurred_at AS conversion_ts,
         coalesce(revenue, 0) AS revenue
  FROM unified.touchpoints WHERE event_type = 'purchase' AND person_id IS NOT NULL),
touches AS (
  SELECT c.conversion_id, c.conversion_ts, c.revenue, t.channel, t.occurred_at
  FROM conversions c JOIN unified.touchpoints t
    ON t.person_id = c.person_id AND t.occurred_at <= c.conversion_ts
   AND t.occurred_at >= c.conversion_ts - INTERVAL '30 days'),
credited AS (
  SELECT 'first_click' AS model, conversion_id, max(revenue) AS revenue,
         attribution_weights('first_click', channel, occurred_at, conversion_ts) AS credit
  FROM touches GROUP BY conversion_id
  UNION ALL
  SELECT 'last_click' AS model, conversion_id, max(revenue) AS revenue,
         attribution_weights('last_click', channel, occurred_at, conversion_ts) AS credit
  FROM touches GROUP BY conversion_id
  UNION ALL
  SELECT 'last_non_direct' AS model, conversion_id, max(revenue) AS revenue,
         attribution_weights('last_non_direct', channel, occurred_at, conversion_ts) AS credit
  FROM touches GROUP BY conversion_id
  UNION ALL
  SELECT 'linear' AS model, conversion_id, max(revenue) AS revenue,
         attribution_weights('linear', channel, occurred_at, conversion_ts) AS credit
  FROM touches GROUP BY conversion_id
  UNION ALL
  SELECT 'position_based' AS model, conversion_id, max(revenue) AS revenue,
         attribution_weights('position_based', channel, occurred_at, conversion_ts) AS credit
  FROM touches GROUP BY conversion_id
  UNION ALL
  SELECT 'time_decay' AS model, conversion_id, max(revenue) AS revenue,
         attribution_weights('time_decay', channel, occurred_at, conversion_ts) AS credit
  FROM touches GROUP BY conversion_id),
shares AS (SELECT model, revenue, unnest(credit) AS e FROM credited)
SELECT model, e['channel'] AS channel, sum(e['weight']) AS conversions,
       sum(e['weight'] * revenue) AS revenue,
       sum(e['weight']) / sum(sum(e['weight'])) OVER (PARTITION BY model) AS share
FROM shares GROUP BY model, e['channel']
