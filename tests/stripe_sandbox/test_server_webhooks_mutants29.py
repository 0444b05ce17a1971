"""Cases a hand mutation audit (m29f) of the sandbox's wire layer found untested: webhook delivery
(signature time, timeout, reset, deleted endpoints), idempotency keys (the path is part of the request,
the error names the key), fault rules (messages, explicit nulls, defaults), the /_sandbox control
endpoints, server plumbing (auth headers, query parameters on POST, the request log, echoed headers),
Stripe-shaped error bodies and form decoding. Each test names the rule it holds (stripe-facts.md, the
OpenAPI spec, or the module's own documented behaviour) and the mutant it kills; expected values are
worked out by hand in the docstrings."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from conftest import Receiver, post_form as _post, ts, wait_until

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _control(sb, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A /_sandbox call that returns (status, json) for errors too (the handle's helper raises)."""
    content = None if body is None else json.dumps(body)
    response = httpx.request(method, f"{sb.base_url}/_sandbox/{path}", content=content, timeout=30)
    return response.status_code, response.json()


@pytest.fixture
def answering():
    made: list[Receiver] = []

    def make(**options: Any) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# -- webhook delivery -------------------------------------------------------------------------------
def test_the_signature_timestamp_is_real_time_even_under_a_frozen_sandbox_clock(sb, client, answering):
    """webhooks.py and stripe-facts: `t` is real unix time, since receivers check it against their own
    wall clock (construct_event's 300 s tolerance). With the sandbox clock frozen at 2026-10-01 the
    header's t is still within a few seconds of time.time(), not OCT (weeks in the past), and the SDK
    accepts the delivery with its default tolerance. Kills W12 (t from the sandbox clock)."""
    import stripe

    sb.set_now(OCT)
    receiver = answering()
    endpoint = client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["customer.created"]})
    before = int(time.time())
    client.v1.customers.create({"name": "A"})
    sb.wait_for_webhooks()
    [(body, signature, _)] = receiver.received
    t = int(signature.split(",")[0].removeprefix("t="))
    assert before - 1 <= t <= int(time.time()) + 1
    assert stripe.Webhook.construct_event(body, signature, endpoint.secret).type == "customer.created"


class _SlowFirst:
    """A loopback receiver whose first answer takes `hold` seconds; later ones are immediate 200s."""

    def __init__(self, hold: float) -> None:
        me = self
        self.count = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with me.lock:
                    me.count += 1
                    first = me.count == 1
                if first:
                    time.sleep(hold)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_endpoint_listening_for_several_types_gets_each_of_them(sb, client, answering):
    """An endpoint's enabled_events lists the types it wants: ["customer.created", "product.created"]
    receives a customer.created and a product.created (either listed type is enough), nothing else.
    Kills W05 (`any` -> `all`: an event had to equal every listed type, so nothing was delivered)."""
    receiver = answering()
    client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["customer.created", "product.created"]})
    customer = client.v1.customers.create({"name": "A"})
    client.v1.products.create({"name": "p"})
    client.v1.customers.update(customer.id, {"name": "B"})   # customer.updated: not listed
    sb.wait_for_webhooks()
    assert sorted(json.loads(b)["type"] for b, _, _ in receiver.received) == ["customer.created", "product.created"]


def test_a_receiver_slower_than_the_webhook_timeout_is_a_failed_attempt_and_is_retried(sb, client):
    """SandboxConfig.webhook_timeout bounds each delivery. Timeout 1 s, a receiver whose first answer
    takes 4 s: attempt 1 fails with an error and no status, attempt 2 (after the 0.05 s test delay) is
    answered 200 at once: [(1, None, False), (2, 200, True)]. Kills W17 (the configured timeout not
    passed: attempt 1 waited the 4 s and was delivered)."""
    sb.configure(webhook_timeout=1.0)
    receiver = _SlowFirst(hold=4.0)
    try:
        client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["customer.created"]})
        client.v1.customers.create({"name": "A"})
        deliveries = sb.wait_for_webhooks()
        assert [(d["attempt"], d["status"], d["delivered"]) for d in deliveries] == [(1, None, False), (2, 200, True)]
        assert deliveries[0]["error"]
    finally:
        receiver.close()


def test_a_reset_forgets_queued_retries_and_the_delivery_log(sb, client, answering):
    """control.py: reset "forget[s] everything". An endpoint answering 500 with retries 30 s apart: after
    the first attempt the log has 1 attempt and 1 delivery queued (pending 1); after a reset the log is
    empty and nothing is pending. Kills W09 (the queue kept: pending 1), W10 (the log kept) and C05
    (`pending` reported as 0 while a retry is queued)."""
    sb.configure(webhook_retry_delays=[30, 30, 30])
    receiver = answering(always_fail=True)
    client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["customer.created"]})
    client.v1.customers.create({"name": "A"})
    wait_until(lambda: sb.webhook_deliveries()["deliveries"])
    before = sb.webhook_deliveries()
    assert ([d["attempt"] for d in before["deliveries"]], before["pending"]) == ([1], 1)
    sb.reset()
    assert sb.webhook_deliveries() == {"deliveries": [], "pending": 0, "idle": True}


def test_deliveries_to_a_deleted_endpoint_are_dropped_and_delivery_goes_on(sb, client, answering):
    """A queued retry whose endpoint was deleted meanwhile is dropped (the deliverer skips a missing
    endpoint). Four failed events for an endpoint with retries 2 s away, the endpoint deleted: the four
    retries find no endpoint and make no attempt; a new endpoint then still gets its event, so the
    deliverer's 4 workers are all alive. Kills W21 (the endpoint check dropped: each retry crashed a
    worker on `None["url"]`, all four died and the new event was never delivered)."""
    sb.configure(webhook_retry_delays=[2, 2, 2])
    failing = answering(always_fail=True)
    endpoint = client.v1.webhook_endpoints.create({"url": failing.url, "enabled_events": ["product.created"]})
    for i in range(4):
        client.v1.products.create({"name": f"p{i}"})
    wait_until(lambda: len(sb.webhook_deliveries()["deliveries"]) == 4)
    client.v1.webhook_endpoints.delete(endpoint.id)
    assert [d["attempt"] for d in sb.wait_for_webhooks()] == [1, 1, 1, 1]
    good = answering()
    client.v1.webhook_endpoints.create({"url": good.url, "enabled_events": ["customer.created"]})
    client.v1.customers.create({"name": "after"})
    deliveries = sb.wait_for_webhooks(timeout=5)
    assert [(d["type"], d["delivered"]) for d in deliveries if d["type"] == "customer.created"] == [("customer.created", True)]


# -- idempotency keys -------------------------------------------------------------------------------
def test_a_key_reused_on_another_path_is_an_idempotency_error(sb, client):
    """stripe-facts: same key with other parameters (idempotency.py: "or another method/path") -> 400
    idempotency_error. POST /v1/customers {name: A} then POST /v1/products {name: A} under one key: the
    second is refused and no product is created (not the customer replayed as a product).
    Kills I02 (the path left out of the fingerprint)."""
    first = _post(sb, "/v1/customers", {"name": "A"}, "k-path")
    second = _post(sb, "/v1/products", {"name": "A"}, "k-path")
    assert first.status_code == 200
    assert (second.status_code, second.json()["error"]["type"]) == (400, "idempotency_error")
    assert "Idempotent-Replayed" not in second.headers
    assert client.v1.products.list().data == []


def test_the_parameters_mismatch_error_names_the_key(sb):
    """Stripe's message for a key reused with other parameters names the key:
    "... Try using a key other than 'k-named' if you meant to execute a different request."
    Kills I10 (the key left out of the message)."""
    _post(sb, "/v1/customers", {"name": "A"}, "k-named")
    error = _post(sb, "/v1/customers", {"name": "B"}, "k-named").json()["error"]
    assert error["message"] == (
        "Keys for idempotent requests can only be used with the same parameters they were first used with. "
        "Try using a key other than 'k-named' if you meant to execute a different request.")


def test_a_stored_error_is_replayed_with_its_own_headers(sb, client):
    """idempotency.py: the first response is stored "success or failure" and replayed, headers too. A
    meter event reusing identifier "evt-1" is refused 400 with Stripe-Should-Retry: false (retrying
    cannot help); sent again under the same key it is replayed with Idempotent-Replayed: true and still
    Stripe-Should-Retry: false. Kills S10 (a stored error kept only its Request-Id header)."""
    meter = client.v1.billing.meters.create({"display_name": "calls", "event_name": "calls", "default_aggregation": {"formula": "sum"}})
    customer = client.v1.customers.create({"name": "A"})
    body = {"event_name": meter.event_name, "identifier": "evt-1", "payload[stripe_customer_id]": customer.id, "payload[value]": "1"}
    assert _post(sb, "/v1/billing/meter_events", body, "k-first").status_code == 200
    refused = _post(sb, "/v1/billing/meter_events", body, "k-dup")
    replayed = _post(sb, "/v1/billing/meter_events", body, "k-dup")
    assert (refused.status_code, refused.headers["Stripe-Should-Retry"]) == (400, "false")
    assert (replayed.status_code, replayed.headers["Idempotent-Replayed"], replayed.headers["Stripe-Should-Retry"]) == (
        400, "true", "false")
    assert replayed.json() == refused.json()


# -- fault rules ------------------------------------------------------------------------------------
def test_malformed_fault_rules_are_refused_with_a_message_naming_the_problem(sb):
    """faults.py: an unknown field is named ("unknown fault fields: ['bogus']"); a wrongly typed one names
    the field, its value and the expected types ("count: '2' ... (expected int)", "rate: 'x' ...
    (expected int or float)"). Nothing is added. Kills F03 (the unknown-field check dropped: a bare
    TypeError from the dataclass) and F11 (the expected types printed as a tuple)."""
    assert _control(sb, "POST", "faults", {"kind": "drop", "bogus": 1}) == (400, {"error": "unknown fault fields: ['bogus']"})
    assert _control(sb, "POST", "faults", {"kind": "drop", "count": "2"}) == (
        400, {"error": "fault field count: '2' has the wrong type (expected int)"})
    assert _control(sb, "POST", "faults", {"kind": "drop", "rate": "x"}) == (
        400, {"error": "fault field rate: 'x' has the wrong type (expected int or float)"})
    assert sb.control("GET", "faults")["faults"] == []


def test_a_fault_rule_with_explicit_nulls_takes_the_defaults(sb, client):
    """A rule's optional fields may be sent as null (JSON clients do): {"kind": "rate_limit", "method":
    null, "count": null, "path": "/v1/products"} is accepted, fires for every matching request and
    answers 429 with the default reason "global-rate". Kills F13 (None type-checked: the rule refused)
    and F09 (another default reason)."""
    status, _ = _control(sb, "POST", "faults", {"kind": "rate_limit", "method": None, "count": None, "path": "/v1/products"})
    assert status == 200
    response = _post(sb, "/v1/products", {"name": "p"})
    assert (response.status_code, response.headers["Stripe-Rate-Limited-Reason"]) == (429, "global-rate")
    assert response.json()["error"]["code"] == "rate_limit"


def test_a_slow_rule_without_a_delay_waits_one_second(sb):
    """faults.py: a slow rule's `delay` defaults to 1.0 s. Listed, the rule shows delay 1.0 and the
    default reason; a request it holds (not released) answers after at least 1 s.
    Kills F08 (default delay 0)."""
    sb.inject_fault("slow", path="/v1/customers", method="GET", count=1)
    [rule] = sb.control("GET", "faults")["faults"]
    assert (rule["delay"], rule["reason"], rule["fired"]) == (1.0, "global-rate", 0)
    started = time.monotonic()
    assert httpx.get(sb.base_url + "/v1/customers", headers={"Authorization": f"Bearer {sb.api_key}"}).status_code == 200
    assert time.monotonic() - started >= 0.9


# -- the control API --------------------------------------------------------------------------------
def test_control_paths_take_a_trailing_slash_and_unknown_ones_are_404(sb):
    """control.py matches routes with the trailing "/" stripped: GET /_sandbox/health/ is the health
    check. An unknown control path is 404 naming it, and so is a GET of the POST-only
    payment_behavior route. Kills C01 (no rstrip), C12 (unknown endpoint answered 200) and C14 (the
    payment_behavior route taken for any method)."""
    assert _control(sb, "GET", "health/") == (200, {"ok": True})
    assert _control(sb, "GET", "nothing") == (404, {"error": "unknown control endpoint GET /_sandbox/nothing"})
    assert _control(sb, "GET", "customers/cus_x/payment_behavior") == (
        404, {"error": "unknown control endpoint GET /_sandbox/customers/cus_x/payment_behavior"})


def test_the_clock_reports_whether_it_is_frozen_and_setting_it_runs_due_billing(sb, client):
    """GET /_sandbox/now says `frozen`; POST /_sandbox/now runs due billing and reports the number of
    actions. Frozen at OCT, a customer without a test clock subscribes to a metered price anchored at
    NOV; moving the clock to NOV + 60 s closes that one period (its draft finalizes only after the 1 h
    grace): billing_actions 1. Back to real time: frozen false. Kills C02 (frozen always false) and C03
    (setting the clock runs no billing: 0 actions)."""
    from conftest import metered_price

    sb.set_now(OCT)
    assert sb.control("GET", "now") == {"now": OCT, "frozen": True}
    _, price = metered_price(client)
    customer = client.v1.customers.create({"name": "A"})
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    moved = sb.control("POST", "now", {"now": NOV + 60})
    assert moved == {"now": NOV + 60, "frozen": True, "billing_actions": 1}
    assert sb.control("POST", "now", {"now": None})["frozen"] is False


def test_payment_behavior_takes_only_known_behaviours_for_known_customers(sb, client):
    """control.py: payment_behavior is one of succeeds / fails / fails_then_succeeds, for an existing
    customer: "sometimes" is 400 naming the choices, an unknown customer 404 naming it; a valid one is
    answered back and leaves the state to be saved. Kills C07 (any value accepted), C08 (unknown
    customers accepted) and C09 (the state not marked dirty)."""
    customer = client.v1.customers.create({"name": "A"})
    path = f"customers/{customer.id}/payment_behavior"
    assert _control(sb, "POST", path, {"payment_behavior": "sometimes"}) == (
        400, {"error": "payment_behavior must be one of succeeds, fails, fails_then_succeeds"})
    assert _control(sb, "POST", "customers/cus_missing/payment_behavior", {"payment_behavior": "fails"}) == (
        404, {"error": "no such customer cus_missing"})
    sb.sandbox.state.dirty = False
    assert _control(sb, "POST", path, {"payment_behavior": "fails"}) == (
        200, {"customer": customer.id, "payment_behavior": "fails"})
    assert sb.sandbox.state.dirty is True
    assert sb.sandbox.state.payment_behavior == {customer.id: "fails"}


def test_config_names_unknown_fields_refuses_nulls_and_keeps_fractional_retry_delays(sb):
    """POST /_sandbox/config: an unknown field is 400 "unknown config field bogus"; a null grace_period
    is 400 (int(None) is a TypeError, reported, not a crashed handler); webhook_retry_delays keep
    fractions: [0.5, 1.5, 2] -> [0.5, 1.5, 2.0]. Kills C10 (the unknown-field check dropped: a bare
    KeyError message), S14 (TypeError not caught: no answer) and C13 (delays truncated to int)."""
    assert _control(sb, "POST", "config", {"bogus": 1}) == (400, {"error": "unknown config field bogus"})
    status, _ = _control(sb, "POST", "config", {"grace_period": None})
    assert status == 400
    answered = sb.configure(webhook_retry_delays=[0.5, 1.5, 2])
    assert answered["webhook_retry_delays"] == [0.5, 1.5, 2.0]
    assert sb.sandbox.config.webhook_retry_delays == (0.5, 1.5, 2.0)


@pytest.mark.parametrize("path, body", [("faults", "[1]"), ("config", "[1]"), ("now", '"soon"')])
def test_a_control_body_that_is_not_a_json_object_is_a_400(sb, path, body):
    """control.py: the control API takes a JSON object and answers a malformed request 400 {"error"}
    (as it does for invalid JSON, whose JSONDecodeError is a ValueError). A JSON array or string is
    just as malformed: 400 with an error message, not a dropped connection (until the twenty-ninth
    session `body.get` / `body.items` raised AttributeError, which `_control` did not catch)."""
    response = httpx.post(f"{sb.base_url}/_sandbox/{path}", content=body, timeout=30)
    kind = "list" if body.startswith("[") else "str"
    assert (response.status_code, response.json()) == (
        400, {"error": f"the request body must be a JSON object, not {kind}"})


def test_saving_without_a_state_file_is_refused(sb):
    """POST /_sandbox/save writes the state file; a sandbox started without one answers 400 "the
    sandbox was started without a state file" rather than claiming a save. Kills C11."""
    assert _control(sb, "POST", "save") == (400, {"error": "the sandbox was started without a state file"})


# -- server plumbing --------------------------------------------------------------------------------
def test_a_response_echoes_the_idempotency_key_it_was_sent(sb):
    """Stripe answers a request sent with an Idempotency-Key with that key in an Idempotency-Key header
    (the SDK reads it from there). Kills S01 (the header not echoed)."""
    response = _post(sb, "/v1/customers", {"name": "A"}, "k-echo")
    assert response.headers["Idempotency-Key"] == "k-echo"


def test_post_parameters_may_also_come_in_the_query_string_and_the_body_wins(sb):
    """server.py merges a POST's query string into its form body, the body taking precedence:
    POST /v1/customers?name=Q&email=q%40x.test with body name=B creates name B, email q@x.test.
    Kills S04 (the query of a POST ignored: no email) and S03 (the query overriding the body: name Q)."""
    response = httpx.post(sb.base_url + "/v1/customers?name=Q&email=q%40x.test", content="name=B",
                          headers={"Authorization": f"Bearer {sb.api_key}", **FORM})
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["email"]) == ("B", "q@x.test")


def test_basic_auth_and_a_bearer_key_after_extra_spaces_are_accepted(sb):
    """The API key may be sent as HTTP Basic auth, the key as the user name and an empty password
    ("sk_test_...:"), as curl -u does; a Bearer key is taken with surrounding whitespace stripped
    ("Bearer  sk_test_..." with two spaces).
    Kills S12 (the password taken as the key) and S19 (the Bearer key not stripped)."""
    basic = base64.b64encode(f"{sb.api_key}:".encode()).decode()
    assert httpx.get(sb.base_url + "/v1/customers", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert httpx.get(sb.base_url + "/v1/customers", headers={"Authorization": f"Bearer  {sb.api_key}"}).status_code == 200


def test_an_invalid_key_is_named_masked_in_the_401(sb):
    """Stripe masks the key in "Invalid API Key provided": its first 8 characters, 8 stars, its last 4.
    sk_live_abcdefgh1234 -> "sk_live_********1234". Kills S13 (the whole key echoed)."""
    response = httpx.get(sb.base_url + "/v1/customers", headers={"Authorization": "Bearer sk_live_abcdefgh1234"})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid API Key provided: sk_live_********1234"


def test_the_request_log_numbers_requests_from_one(sb, client):
    """Each request-log entry has `seq`, its 1-based position: two calls -> 1, 2. Kills S15 (0-based)."""
    client.v1.customers.create({"name": "A"})
    client.v1.customers.list()
    assert [e["seq"] for e in sb.requests_log()] == [1, 2]


def test_a_server_error_fault_is_an_api_error(sb):
    """Stripe's 500s have error type api_error. Kills S16 (type invalid_request_error)."""
    sb.inject_fault("server_error", path="/v1/customers", count=1)
    response = _post(sb, "/v1/customers", {"name": "A"})
    assert (response.status_code, response.json()["error"]["type"]) == (500, "api_error")


# -- error bodies -----------------------------------------------------------------------------------
def test_an_unrecognized_url_names_method_and_path_and_links_the_request_log(sb):
    """Stripe: 404 "Unrecognized request URL (GET: /v1/nothing)." with request_log_url
    https://dashboard.stripe.com/test/logs/<the Request-Id header>. Kills A08 (the method left out)
    and A03 (no request_log_url)."""
    response = httpx.get(sb.base_url + "/v1/nothing", headers={"Authorization": f"Bearer {sb.api_key}"})
    error = response.json()["error"]
    assert (response.status_code, error["message"]) == (404, "Unrecognized request URL (GET: /v1/nothing).")
    assert error["request_log_url"] == "https://dashboard.stripe.com/test/logs/" + response.headers["Request-Id"]


def test_a_declined_card_names_its_decline_code(sb, client):
    """Stripe's card errors carry `decline_code` beside `code`: paying an invoice while the customer's
    card fails is 402 card_error, code card_declined, decline_code generic_decline. Kills A04 (an
    error's extra fields left out of the body)."""
    customer = client.v1.customers.create({"name": "A"})
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "currency": "usd"})
    invoice = client.v1.invoices.create({"customer": customer.id, "pending_invoice_items_behavior": "include"})
    client.v1.invoices.finalize_invoice(invoice.id, {"auto_advance": False})
    paid = _post(sb, f"/v1/invoices/{invoice.id}/pay", {})
    error = paid.json()["error"]
    assert (paid.status_code, error["type"], error["code"], error["decline_code"]) == (
        402, "card_error", "card_declined", "generic_decline")


def test_a_missing_object_names_the_id_parameter(sb):
    """A 404 resource_missing names the parameter: GET /v1/customers/cus_missing -> param "id",
    message "No such customer: 'cus_missing'". Kills A12 (param dropped)."""
    response = httpx.get(sb.base_url + "/v1/customers/cus_missing", headers={"Authorization": f"Bearer {sb.api_key}"})
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (404, "resource_missing", "id")
    assert error["message"] == "No such customer: 'cus_missing'"


# -- form decoding ----------------------------------------------------------------------------------
def test_digit_keys_under_metadata_stay_a_map(sb):
    """forms.py: under map-valued parameters the keys are user data, so metadata[1]=a&metadata[2]=b is
    the map {"1": "a", "2": "b"}, not a list, end to end through the API (the parser-level rule is
    test_sandbox_arithmetic_and_forms' test_nested_brackets_lists_and_maps, which also kills P02 and P07)."""
    response = _post(sb, "/v1/customers", "name=A&metadata[1]=a&metadata[2]=b", **FORM)
    assert response.status_code == 200
    assert response.json()["metadata"] == {"1": "a", "2": "b"}


def test_digit_keys_in_a_meter_event_payload_stay_a_map(sb, client):
    """forms.py: `payload` is map-valued. A meter reading its customer from payload key "7" and its
    value from key "8": payload[7]=<customer>&payload[8]=3 is accepted and answers that payload as a
    map, end to end (the parser-level rule is test_nested_brackets_lists_and_maps, which also kills P01)."""
    meter = client.v1.billing.meters.create({
        "display_name": "digits", "event_name": "digits", "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "7"}, "value_settings": {"event_payload_key": "8"}})
    customer = client.v1.customers.create({"name": "A"})
    response = _post(sb, "/v1/billing/meter_events", f"event_name={meter.event_name}&payload[7]={customer.id}&payload[8]=3", **FORM)
    assert response.status_code == 200, response.text
    assert response.json()["payload"] == {"7": customer.id, "8": "3"}


@pytest.mark.parametrize("body, parsed", [
    ("a[0]=x&a[k]=y", {"a": {"0": "x", "k": "y"}}),     # not all indices: a dict
    ("a[]=x&a[1]=y", {"a": ["x", "y"]}),                # appended at index 0, then index 1
])
def test_only_all_index_keys_make_a_list_and_an_append_takes_the_next_index(body, parsed):
    """forms.py: a dict whose keys are *all* decimal indices becomes a list; `a[]` appends at index
    len(a). Kills P04 (any index key makes a list: int("k") fails) and P05 (append at len + 1: a[]=x
    went to index 1 and a[1]=y overwrote it)."""
    from metering.stripe_sandbox.forms import parse_form

    assert parse_form(body) == parsed


def test_text_after_the_last_bracket_is_an_invalid_name():
    """forms.py: a name is head[seg]...[seg] with nothing after the last bracket: "a[b]c" is refused,
    not read as a.b. Kills P03 (the end-of-name check dropped)."""
    from metering.stripe_sandbox.forms import FormError, parse_form

    with pytest.raises(FormError, match=r"Invalid parameter name: 'a\[b\]c'"):
        parse_form("a[b]c=1")
