-- analytics.stripe_invoice_lines: one row per Stripe invoice line, from the API pull when the pull saw
-- the invoice (a direct, later read; an invoice pulled with two months: its latest pull), else from the
-- webhook-derived state. invoice_item: the invoice item a line bills ('ii_...'; NULL for a subscription
-- item's line); metering_item: the engine's key of its own item (the item's metadata, copied onto the line).
-- invoice_status: of the invoice (draft | open | paid | uncollectible | void), from the same source,
-- except that the webhook state's wins when it has moved further than the pull (voided or paid since:
-- draft < open < uncollectible < void < paid, metering.webhooks.state.INVOICE_STATUS_RANK), as in
-- reconciliation (not over a pulled draft, whose lines may have changed since): a void invoice's lines
-- are listed but bill nothing (reconciliation leaves them out, and a draft Stripe will not finalize:
-- auto_advance false in stripe_invoices_api / stripe_invoices; filter them with
-- `WHERE invoice_status <> 'void'` to add up what Stripe bills). period_start / period_end: UTC,
-- without a time zone (Stripe's instants, converted explicitly), so they cast to the UTC date and compare
-- with the DATE periods of the other views in any session time zone.
CREATE OR REPLACE VIEW analytics.stripe_invoice_lines AS
WITH lines AS (
    SELECT l.invoice_id, l.line_id, l.customer_id, l.meter, l.price_id, l.quantity_decimal, l.amount, l.currency,
           l.period_start, l.period_end, l.invoice_item, l.metering_item, 'api' AS source,
           (SELECT CASE WHEN h.status <> 'draft'
                             AND list_position(['draft', 'open', 'uncollectible', 'void', 'paid'], w.status)
                                 > list_position(['draft', 'open', 'uncollectible', 'void', 'paid'], h.status)
                        THEN w.status ELSE h.status END
            FROM main.stripe_invoices_api h LEFT JOIN main.stripe_invoices w ON w.invoice_id = h.invoice_id
            WHERE h.invoice_id = l.invoice_id ORDER BY h.pulled_at DESC LIMIT 1) AS invoice_status
    FROM main.stripe_invoice_lines_api l
    QUALIFY dense_rank() OVER (PARTITION BY l.invoice_id ORDER BY l.pulled_at DESC, l.billing_month DESC) = 1
    UNION ALL
    SELECT w.invoice_id, w.line_id, i.customer_id,
           coalesce(w.meter, regexp_extract(w.event_name, '^metering_(.*)$', 1)) AS meter,
           w.price_id, w.quantity_decimal, w.amount, w.currency, w.period_start, w.period_end,
           w.invoice_item, w.metering_item, 'webhook' AS source, i.status AS invoice_status
    FROM main.stripe_invoice_lines w
    LEFT JOIN main.stripe_invoices i ON i.invoice_id = w.invoice_id
    WHERE w.invoice_id NOT IN (SELECT invoice_id FROM main.stripe_invoice_lines_api)
)
SELECT * REPLACE (timezone('UTC', period_start) AS period_start, timezone('UTC', period_end) AS period_end)
FROM lines;
COMMENT ON VIEW analytics.stripe_invoice_lines IS 'One row per Stripe invoice line (amount in minor units; period_start and period_end UTC without a time zone, period_end inclusive as Stripe states it): the API pull for invoices it saw (the latest pull of each), webhook-derived lines for the others (source api|webhook), with their invoice''s status (the pull''s, or the webhook state''s when it has moved further; a void invoice''s lines bill nothing); invoice_item is the invoice item a line bills (NULL for subscription lines), metering_item the engine''s key of its own items (stripe_invoice_items.item_key). Source: stripe_invoice_lines_api, stripe_invoice_lines, stripe_invoices.';
