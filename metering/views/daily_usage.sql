-- analytics.daily_usage: one row per customer x meter x UTC day, from the hourly usage_aggregates.
-- A meter's aggregation (rating_rules/meters.yaml) is the one rated_meters recorded when the meter priced
-- its first rated line (never changed after); a meter that has rated nothing yet has none here.
CREATE OR REPLACE VIEW analytics.daily_usage AS
WITH meters AS (
    SELECT meter, arg_min(json_extract_string(definition, '$.aggregation'), first_rated_at) AS aggregation
    FROM main.rated_meters
    GROUP BY meter
),
hours AS (
    SELECT customer_id, meter, event_date, quantity, event_count, distinct_values, last_event_time, last_event_id
    FROM main.usage_aggregates
)
SELECT
    h.customer_id,
    h.meter,
    h.event_date,
    CAST(sum(h.event_count) AS BIGINT)        AS events,          -- raw events accepted that day
    CAST(sum(h.quantity) AS DECIMAL(38, 12))  AS quantity_sum,    -- the day's quantity for count / sum meters
    CAST(max(h.quantity) AS DECIMAL(38, 12))  AS quantity_max,    -- the day's peak for max meters (e.g. storage_gb)
    -- exact distinct count for unique_count meters, NULL for the others; a meter not rated yet: from the hours'
    -- distinct values, which only unique_count meters' hours carry
    CASE WHEN m.aggregation = 'unique_count' OR (m.aggregation IS NULL AND count(h.distinct_values) > 0)
         THEN CAST(list_unique(flatten(list(coalesce(h.distinct_values, [])))) AS BIGINT)
    END                                       AS distinct_values,
    -- the day's value for last meters (e.g. seats), NULL for the others and for a meter not rated yet: the
    -- value of the day's latest event, equal times broken by the larger event_id, as the rating does
    CASE WHEN m.aggregation = 'last'
         THEN CAST(arg_max(h.quantity, (h.last_event_time, h.last_event_id)) AS DECIMAL(38, 12))
    END                                       AS quantity_last
FROM hours h
LEFT JOIN meters m ON m.meter = h.meter
GROUP BY h.customer_id, h.meter, h.event_date, m.aggregation;
COMMENT ON VIEW analytics.daily_usage IS 'One row per customer x meter x UTC day: events, quantity_sum (count/sum meters), quantity_max (max meters), distinct_values (unique_count meters, else NULL), quantity_last (last meters: the value of the day''s latest event, ties by the larger event_id, as rating; else NULL). A meter''s aggregation is the one rated_meters recorded; before a meter rates its first line quantity_last is NULL and distinct_values is given where the hours carry distinct values (unique_count meters). Source: usage_aggregates, rated_meters.';
