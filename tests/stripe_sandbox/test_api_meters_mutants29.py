"""Cases a hand mutation audit (m29b) of the sandbox's request plumbing (``api.py``: schema checks,
coercion, metadata, list pagination and filters), meters and meter events (``meters_api.py``), tier
arithmetic (``tiers.py``) and billing periods (``periods.py``) found untested (every tiers.py and
periods.py mutant was already killed, so all cases here are of api.py and meters_api.py, plus one
defect of ``as_bool``, fixed in the twenty-ninth session). Each test names the
rule it holds (Stripe's OpenAPI description, stripe-facts.md or docs/stripe-sandbox.md) and the
mutant it kills; expected values are worked out by hand in the docstrings. Every API call goes over
loopback HTTP; the ``sb`` fixture holds each response to the OpenAPI description."""

from __future__ import annotations

import httpx
import pytest
import stripe

from conftest import metered_price, post_form
from test_sandbox_meter_events import T0, _event, _summary


@pytest.fixture
def http(sb):
    with httpx.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=30) as client:
        yield client


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


# -- api.py: request schema checks ----------------------------------------------------------------
def test_a_too_long_value_of_23_characters_is_quoted_whole_and_one_of_24_is_abbreviated(sb, http):
    """POST /v1/customers `phone` has maxLength 20. The error quotes the value whole up to 23
    characters (10 + '...' + 10 would be no shorter), beyond that its first and last ten:
    '12345678901234567890123' (23) is shown as is; '123456789012345678901234' (24) as
    '1234567890...5678901234'. Kills A08 (`len(text) <= 23` -> `< 23`)."""
    whole = "12345678901234567890123"
    error = _error(http.post("/v1/customers", data={"phone": whole}))
    assert (error["param"], error["message"]) == ("phone", f"Invalid string: {whole}; must be at most 20 characters")
    error = _error(http.post("/v1/customers", data={"phone": whole + "4"}))
    assert error["message"] == "Invalid string: 1234567890...5678901234; must be at most 20 characters"


def test_an_unknown_meter_formula_is_refused_with_the_formulas_listed(sb, http):
    """stripe-facts.md: `default_aggregation.formula` is one of sum | count | last (there is no
    `max`). The spec does not list them (the handler's own check answers): 400, param
    `default_aggregation[formula]`, message "Invalid default_aggregation[formula]: must be one of
    sum, count, last" (the allowed values comma-separated, in that order). Kills A17 (the values
    joined with ' or ')."""
    data = {"display_name": "x", "event_name": "x", "default_aggregation[formula]": "max"}
    error = _error(http.post("/v1/billing/meters", data=data))
    assert (error["param"], error["message"]) == (
        "default_aggregation[formula]", "Invalid default_aggregation[formula]: must be one of sum, count, last")


# -- api.py: metadata -------------------------------------------------------------------------------
def test_metadata_takes_40_character_keys_500_character_values_and_50_keys(sb, client):
    """Stripe's metadata limits (docs: api/metadata): up to 50 keys, key names up to 40 characters,
    values up to 500 characters; each limit itself is allowed. A customer is given a 40-character key
    'k'*40 with a 500-character value, plus 49 keys 'm0'..'m48': 50 keys, accepted. A 51st key is
    refused (400, param `metadata`, "at most 50 keys") and the customer keeps its 50.
    Kills A22 (`> 40` -> `>= 40`), A23 (`> 500` -> `>= 500`) and A24 (`> 50` -> `>= 50`)."""
    metadata = {"k" * 40: "v" * 500, **{f"m{i}": str(i) for i in range(49)}}
    customer = client.v1.customers.create({"name": "Acme", "metadata": metadata})
    assert customer.metadata.to_dict() == metadata
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.update(customer.id, {"metadata": {"m49": "49"}})
    assert (raised.value.param, raised.value.user_message) == ("metadata", "Metadata can have at most 50 keys")
    assert len(client.v1.customers.retrieve(customer.id).metadata.to_dict()) == 50


def test_an_empty_metadata_value_deletes_its_key_and_empty_metadata_clears_them_all(sb, client):
    """Stripe (docs: api/metadata): "You can unset individual keys by posting an empty value to them.
    You can clear all keys by posting an empty value to metadata." {a: 1, b: 2} updated with
    metadata[a]= leaves {b: 2}; then metadata= leaves {}. Kills A21 (`metadata=` keeps the current
    keys)."""
    customer = client.v1.customers.create({"name": "Acme", "metadata": {"a": "1", "b": "2"}})
    assert client.v1.customers.update(customer.id, {"metadata": {"a": ""}}).metadata.to_dict() == {"b": "2"}
    assert client.v1.customers.update(customer.id, {"metadata": ""}).metadata.to_dict() == {}


# -- api.py: lists ----------------------------------------------------------------------------------
def _customers(sb, client, n: int) -> list[str]:
    """`n` customers created one second apart from T0 on: their ids, newest first (list order)."""
    ids = []
    for i in range(n):
        sb.set_now(T0 + i)
        ids.append(client.v1.customers.create({"name": f"c{i}"}).id)
    return ids[::-1]


def test_a_list_holds_10_by_default_and_limit_runs_from_1_to_100(sb, client, http):
    """Spec, `limit`: "A limit on the number of objects to be returned. Limit can range between 1
    and 100, and the default is 10." With 11 customers: no limit -> the newest 10, has_more true;
    limit=100 (the bound itself) -> all 11, has_more false; limit=101 and limit=0 -> 400 param
    `limit`. Kills A25 (default 11: 11 returned, has_more false) and A26 (`<= 100` -> `< 100`;
    also killed by test_sandbox_lists_and_test_clocks, which lists with limit 100)."""
    newest_first = _customers(sb, client, 11)
    page = client.v1.customers.list()
    assert ([c.id for c in page.data], page.has_more) == (newest_first[:10], True)
    page = client.v1.customers.list({"limit": 100})
    assert ([c.id for c in page.data], page.has_more) == (newest_first, False)
    for limit in ("101", "0"):
        error = _error(http.get("/v1/customers", params={"limit": limit}))
        assert (error["param"], error["message"]) == ("limit", "Invalid limit: must be between 1 and 100")


def test_has_more_is_false_on_a_page_that_ends_exactly_at_either_end_of_the_list(sb, client):
    """11 customers, newest first n0..n10. starting_after=n8, limit=2 -> [n9, n10], the last two:
    nothing after them, has_more false (9 + 2 = 11 is not < 11). ending_before=n2, limit=2 ->
    [n0, n1]: nothing before them, has_more false (2 - 2 = 0 is not > 0); ending_before=n3, limit=2
    -> [n1, n2], has_more true (n0 is before). Kills A32 (`end - limit >= 0`) and A31
    (`start + limit <= len`; also killed by test_sandbox_invoice_items)."""
    n = _customers(sb, client, 11)
    page = client.v1.customers.list({"limit": 2, "starting_after": n[8]})
    assert ([c.id for c in page.data], page.has_more) == ([n[9], n[10]], False)
    page = client.v1.customers.list({"limit": 2, "ending_before": n[2]})
    assert ([c.id for c in page.data], page.has_more) == ([n[0], n[1]], False)
    page = client.v1.customers.list({"limit": 2, "ending_before": n[3]})
    assert ([c.id for c in page.data], page.has_more) == ([n[1], n[2]], True)


def test_starting_after_and_ending_before_together_are_refused(sb, client, http):
    """Stripe takes one cursor at a time: both -> 400 "You may only specify one of these parameters:
    ending_before, starting_after." (param starting_after). Kills A28 (the check dropped: the
    request would be answered with the starting_after page)."""
    n = _customers(sb, client, 3)
    error = _error(http.get("/v1/customers", params={"starting_after": n[0], "ending_before": n[2]}))
    assert (error["param"], error["message"]) == (
        "starting_after", "You may only specify one of these parameters: ending_before, starting_after.")


def test_created_filters_take_an_exact_time_and_strict_and_inclusive_bounds(sb, client, http):
    """Spec, `created`: an exact unix time or a range of gt/gte/lt/lte. Customers created at T0,
    T0 + 1, T0 + 2 (c0, c1, c2; listed newest first): created=T0+1 -> [c1]; created[gt]=T0+1 ->
    [c2] (strict); created[lte]=T0+1 -> [c1, c0] (inclusive); created[gte]=T0+1 & created[lt]=T0+2
    -> [c1]; created[after]=T0 -> 400 "Received unknown parameter: created[after]". Kills A34
    (exact -> `>=`), A35 (`gt` inclusive), A36 (`lte` strict) and A37 (unknown bounds ignored)."""
    c2, c1, c0 = _customers(sb, client, 3)

    def listed(created) -> list[str]:
        return [c.id for c in client.v1.customers.list({"created": created}).data]

    assert listed(T0 + 1) == [c1]
    assert listed({"gt": T0 + 1}) == [c2]
    assert listed({"lte": T0 + 1}) == [c1, c0]
    assert listed({"gte": T0 + 1, "lt": T0 + 2}) == [c1]
    error = _error(http.get("/v1/customers", params={"created[after]": str(T0)}))
    assert error["message"] == "Received unknown parameter: created[after]"


def test_a_cursor_of_another_kind_of_object_is_refused(sb, client, http):
    """Spec, `starting_after`: "an object ID that defines your place in the list": a price's id has
    no place in the list of customers. GET /v1/customers?starting_after=<price id> -> 400 code
    resource_missing, param starting_after (the same answer as for an id of no object), not an
    empty page. Kills A39 (any existing object accepted as a cursor: every customer ranks before
    the price and the page comes back empty)."""
    _customers(sb, client, 2)
    product = client.v1.products.create({"name": "Plans"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 5})
    error = _error(http.get("/v1/customers", params={"starting_after": price.id}))
    assert (error["code"], error["param"], error["message"]) == (
        "resource_missing", "starting_after", f"Invalid starting_after id: {price.id}")


def test_an_expansion_deeper_than_four_levels_is_refused(sb, client, http):
    """Stripe expands at most four levels (docs: api/expanding_objects, "up to four levels").
    On a subscription, items.data.price.product (four levels, three dots) expands; adding
    .default_price (five levels; a product's default_price is expandable, here null) is refused
    with 400 param expand, "Invalid expand path: items.data.price.product.default_price".
    Kills A38 (`count('.') > 3` -> `> 4`: the five-level path answered 200)."""
    product = client.v1.products.create({"name": "Seats"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100,
                                     "recurring": {"interval": "month"}})
    customer = client.v1.customers.create({"name": "A"})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    four = client.v1.subscriptions.retrieve(sub.id, {"expand": ["items.data.price.product"]})
    assert four["items"].data[0].price.product.id == product.id
    path = "items.data.price.product.default_price"
    error = _error(http.get(f"/v1/subscriptions/{sub.id}", params={"expand[]": path}))
    assert (error["param"], error["message"]) == ("expand", f"Invalid expand path: {path}")


def test_an_empty_unmodelled_filter_or_an_expand_on_an_update_is_not_refused(sb, client, http):
    """docs/stripe-sandbox.md: documented parameters the sandbox does not model are refused rather
    than ignored, but an empty value is an absent one, and `expand` is taken by every update.
    GET /v1/invoices?due_date= (empty) -> 200 (due_date=5 -> 400 param due_date); POST
    /v1/customers/{id} name=B with expand[]=test_clock -> 200 with the new name. Kills A42 (an
    empty value refused) and A43 (expand refused on updates as an unmodelled parameter)."""
    assert http.get("/v1/invoices", params={"due_date": ""}).status_code == 200
    assert _error(http.get("/v1/invoices", params={"due_date": "5"}))["param"] == "due_date"
    customer = client.v1.customers.create({"name": "A"})
    assert client.v1.customers.update(customer.id, {"name": "B", "expand": ["test_clock"]}).name == "B"


# -- meters_api.py: meter event values --------------------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_a_meter_event_value_that_is_not_a_finite_number_is_refused(sb, client, value):
    """docs/stripe-sandbox.md: what Stripe validates asynchronously for meter event values is a
    synchronous 400 here. Python's Decimal parses 'NaN', 'Infinity', '-Infinity' and 'sNaN', none of
    them a number of usage: each is refused with param payload[value], "Invalid decimal: <value>",
    and nothing is counted (the day's summary sums to 0). Kills A15 (the finiteness check dropped)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    with pytest.raises(stripe.InvalidRequestError) as raised:
        _event(client, meter, customer, value, T0)
    assert (raised.value.param, raised.value.user_message) == ("payload[value]", f"Invalid decimal: {value}")
    assert _summary(client, meter, customer, T0 - 86400, T0 + 86400) == [(T0 - 86400, T0 + 86400, 0)]


# -- api.py: coercion -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1", "0", "True", "False"])
def test_a_boolean_other_than_true_or_false_is_refused_as_stripe_does(sb, http, value):
    """Stripe's v1 API reads booleans as true/false (stripe-python sends 'true'/'false'); clients that
    send 1 get 400 "Invalid boolean: 1" with the parameter named (reported against the live API, e.g.
    github.com/Azuriom/Plugin-Shop/pull/274 (2026) for `invoice_creation[enabled]=1`,
    github.com/cartalyst/stripe/issues/218 (2023)). The sandbox's `as_bool` accepts '1' and '0',
    so POST /v1/products active=1 answered 200 where Stripe answers 400; so did True, which Stripe
    refuses as "Invalid boolean: True" (github.com/stripe/stripe-python/issues/487). Found through
    A14 (which drops '1', and survived). Expected: 400, param `active`, message
    f"Invalid boolean: {value}", and no product created."""
    error = _error(http.post("/v1/products", data={"name": "Widget", "active": value}))
    assert (error["param"], error["message"]) == ("active", f"Invalid boolean: {value}")
    assert http.get("/v1/products").json()["data"] == []



def test_a_boolean_parameter_no_handler_reads_strictly_is_refused_by_the_request_schema(sb, client, http):
    """`paid_out_of_band` (POST /v1/invoices/{id}/pay, a boolean in the spec) was read as "is it the
    text true": 1 fell through to a charge of the customer's card, where Stripe refuses it (400,
    "Invalid boolean: 1"). The request schema now checks every boolean parameter as `as_bool` does,
    before the invoice is looked at: the draft stays a draft."""
    customer = client.v1.customers.create({"name": "A"}).id
    client.v1.invoice_items.create({"customer": customer, "amount": 500, "currency": "usd"})
    invoice = client.v1.invoices.create({"customer": customer, "pending_invoice_items_behavior": "include"}).id
    error = _error(http.post(f"/v1/invoices/{invoice}/pay", data={"paid_out_of_band": "1"}))
    assert (error["param"], error["message"]) == ("paid_out_of_band", "Invalid boolean: 1")
    assert client.v1.invoices.retrieve(invoice).status == "draft"

def test_an_empty_customer_in_the_payload_is_a_missing_payload_key(sb, client, http):
    """stripe-facts: the payload must carry the customer key. payload[stripe_customer_id]= (empty)
    names no customer: 400 code parameter_missing, param payload[stripe_customer_id], "Missing
    required payload key: stripe_customer_id.", and nothing is recorded, not even as an uncounted
    event for an unknown customer (/_sandbox/meter_errors stays empty). Kills M29 (only an absent key
    refused: the empty one accepted as customer '')."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    response = post_form(sb, "/v1/billing/meter_events", {"event_name": meter.event_name,
                                                            "payload[stripe_customer_id]": "", "payload[value]": "1"})
    error = _error(response)
    assert (error["code"], error["param"], error["message"]) == (
        "parameter_missing", "payload[stripe_customer_id]", "Missing required payload key: stripe_customer_id.")
    assert sb.control("GET", "meter_errors")["errors"] == []


# -- meters_api.py: summaries -----------------------------------------------------------------------
def test_a_whole_aggregated_value_is_a_json_integer_and_a_fraction_a_json_number(sb, client, http):
    """Spec, billing.meter_event_summary.aggregated_value: a number; Stripe's documented example
    shows a whole value as an integer (`"aggregated_value": 0`). Events 1.5 and 1.5 at T0 (hour
    one) and 1.25 at T0 + 3600 (hour two), grouped by hour over [T0, T0 + 7200): hour two sums to
    1.25 (a JSON number with a fraction), hour one to 3, written `3` on the wire (a JSON integer,
    not `3.0`). Read off the raw body, where 3 and 3.0 differ. Kills M21 (every value a float)."""
    sb.set_now(T0 + 7200)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    for value, at in (("1.5", T0), ("1.5", T0 + 60), ("1.25", T0 + 3600)):
        _event(client, meter, customer, value, at)
    body = http.get(f"/v1/billing/meters/{meter.id}/event_summaries",
                    params={"customer": customer, "start_time": T0, "end_time": T0 + 7200,
                            "value_grouping_window": "hour"}).json()
    values = [s["aggregated_value"] for s in body["data"]]  # newest window first
    assert values == [1.25, 3] and type(values[1]) is int



def test_two_customers_summaries_of_one_window_have_different_ids(sb, client):
    """Spec: a summary's `id` is its "Unique identifier for the object". Customers A and B each with
    one event at T0 + 60 on the same meter: their summaries of [T0, T0 + 3600) are two objects, so
    two ids. Kills M24 (the customer left out of the id: both would be mtrusg_test_<meter><T0>)."""
    sb.set_now(T0 + 3600)
    meter, _ = metered_price(client)
    ids = []
    for name in ("A", "B"):
        customer = client.v1.customers.create({"name": name}).id
        _event(client, meter, customer, 1, T0 + 60)
        [summary] = client.v1.billing.meters.event_summaries.list(
            meter.id, {"customer": customer, "start_time": T0, "end_time": T0 + 3600}).data
        ids.append(summary.id)
    assert ids[0] != ids[1]
