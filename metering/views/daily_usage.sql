-- analytics.daily_usage: one row per customer x meter x UTC day, from the hourly usage_aggregates.
CREATE OR REPLACE VIEW analytics.daily_usage AS
WITH hours AS (
    SELECT customer_id, meter, event_date, quantity, event_count, distinct_values
    FROM main.usage_aggregates
)
SELECT
    customer_id,
    meter,
    event_date,
    CAST(sum(event_count) AS BIGINT)        AS events,          -- raw events accepted that day
    CAST(sum(quantity) AS DECIMAL(38, 12))  AS quantity_sum,    -- the day's quantity for count / sum meters
    CAST(max(quantity) AS DECIMAL(38, 12))  AS quantity_max,    -- the day's peak for max meters (e.g. storage_gb)
    CAST(list_unique(flatten(list(coalesce(distinct_values, [])))) AS BIGINT)
                                            AS distinct_values  -- exact distinct count for unique_count meters
FROM hours
GROUP BY customer_id, meter, event_date;
COMMENT ON VIEW analytics.daily_usage IS 'One row per customer x meter x UTC day: events, quantity_sum (count/sum meters), quantity_max (max meters), distinct_values (unique_count meters). Source: usage_aggregates.';
