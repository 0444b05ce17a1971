"""The receiver: verify before parsing, land durably, never a 5xx for a bad request (I11, I13)."""

from __future__ import annotations

import hashlib
import hmac
import json
import warnings
from pathlib import Path

import pytest

from metering.webhooks.landing import landing_files
from metering.webhooks.receiver import ReceiverSettings, create_app
from webhook_payloads import OLD_SECRET, SECRET, body_of, event, invoice, signature

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

NOW = 1_790_000_000


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


def make_client(landing: Path, secrets=(SECRET,), **kw) -> TestClient:
    settings = ReceiverSettings(
        secrets=[s.encode() for s in secrets], landing_dir=landing, clock=lambda: NOW, **kw
    )
    return TestClient(create_app(settings))


def landed_bodies(landing: Path) -> list[str]:
    out = []
    for path in landing_files(landing):
        for raw in path.read_text().splitlines():
            out.append(json.loads(raw)["body"])
    return out


def post(client: TestClient, body: str | bytes, header: str | None, **headers):
    hdrs = {"content-type": "application/json", **headers}
    if header is not None:
        hdrs["stripe-signature"] = header
    return client.post("/webhooks/stripe", content=body, headers=hdrs)


def sample_body(event_id: str = "evt_1", created: int = NOW) -> str:
    return body_of(event(event_id, "invoice.finalized", created, invoice("in_1")))


def test_valid_event_is_landed_with_receipt_time_and_headers(landing: Path):
    client = make_client(landing)
    body = sample_body()
    header = signature(body, timestamp=NOW)
    response = post(client, body, header)
    assert response.status_code == 200
    assert response.json() == {"received": True, "id": "evt_1"}
    [path] = landing_files(landing)
    [record] = [json.loads(raw) for raw in path.read_text().splitlines()]
    assert record["body"] == body  # the exact signed text
    assert record["headers"] == {"stripe-signature": header, "content-type": "application/json"}
    assert record["received_at"].endswith("+00:00")
    assert client.get("/healthz").json() == {"status": "ok", "accepted": 1, "rejected": {}, "landing_failures": 0}


def test_duplicate_delivery_is_acknowledged_and_landed_again(landing: Path):
    client = make_client(landing)
    body = sample_body()
    for _ in range(2):
        assert post(client, body, signature(body, timestamp=NOW)).status_code == 200
    assert landed_bodies(landing) == [body, body]  # de-duplication happens on landing, by event id


def test_out_of_order_deliveries_are_all_accepted(landing: Path):
    client = make_client(landing)
    bodies = [sample_body("evt_late", NOW - 3600), sample_body("evt_early", NOW - 7200)]
    for body in bodies:
        assert post(client, body, signature(body, timestamp=NOW)).status_code == 200
    assert landed_bodies(landing) == bodies


@pytest.mark.parametrize(
    ("offset", "status", "reason"),
    [
        (-301, 400, "timestamp_too_old"),
        (-300, 200, None),
        (300, 200, None),
        (301, 400, "timestamp_in_future"),
        (86_400, 400, "timestamp_in_future"),
    ],
)
def test_timestamp_checked_in_both_directions(landing: Path, offset: int, status: int, reason: str | None):
    client = make_client(landing)
    body = sample_body()
    response = post(client, body, signature(body, timestamp=NOW + offset))
    assert response.status_code == status
    if reason:
        assert response.json() == {"error": reason}
        assert landed_bodies(landing) == []


def test_tolerance_is_configurable(landing: Path):
    client = make_client(landing, tolerance_seconds=10)
    body = sample_body()
    assert post(client, body, signature(body, timestamp=NOW - 11)).status_code == 400
    assert post(client, body, signature(body, timestamp=NOW - 10)).status_code == 200


def test_wrong_secret_is_rejected(landing: Path):
    client = make_client(landing)
    body = sample_body()
    response = post(client, body, signature(body, secret="whsec_someone_else", timestamp=NOW))
    assert (response.status_code, response.json()) == (400, {"error": "signature_mismatch"})
    assert landed_bodies(landing) == []


def test_rotation_accepts_old_and_new_secret(landing: Path):
    client = make_client(landing, secrets=(SECRET, OLD_SECRET))
    body = sample_body()
    assert post(client, body, signature(body, secret=OLD_SECRET, timestamp=NOW)).status_code == 200
    assert post(client, body, signature(body, secret=SECRET, timestamp=NOW)).status_code == 200
    # during rotation Stripe sends one v1 per secret: any match is enough
    both = signature(body, secret=OLD_SECRET, timestamp=NOW) + ",v1=" + signature(body, timestamp=NOW).split("v1=")[1]
    assert post(client, body, both).status_code == 200
    # once the old secret is removed from the configuration it no longer works
    new_only = make_client(landing, secrets=(SECRET,))
    assert post(new_only, body, signature(body, secret=OLD_SECRET, timestamp=NOW)).status_code == 400


def test_v0_only_signature_is_rejected(landing: Path):
    client = make_client(landing)
    body = sample_body()
    valid_hex = signature(body, timestamp=NOW).split("v1=")[1]
    response = post(client, body, f"t={NOW},v0={valid_hex}")
    assert (response.status_code, response.json()) == (400, {"error": "no_v1_signature"})
    # v0 next to a valid v1 is ignored, not an error
    assert post(client, body, f"t={NOW},v0=deadbeef,v1={valid_hex}").status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", "v1=" + "0" * 64, "t=abc,v1=" + "0" * 64, f"t={NOW},t={NOW},v1=" + "0" * 64,
     # 4,300 digits and more: int() raised and the receiver answered 500
     "t=" + "1" * 5000 + ",v1=" + "0" * 64],
    ids=["none", "empty", "garbage", "no_t", "t_not_digits", "two_t", "t_5000_digits"],
)
def test_missing_or_malformed_signature_header(landing: Path, header: str | None):
    client = make_client(landing)
    response = post(client, sample_body(), header)
    assert response.status_code == 400
    assert landed_bodies(landing) == []


def test_a_timestamp_with_leading_zeros_is_not_the_signed_one(landing: Path):
    """`t=0<now>` verified against the signature of `<now>.<body>` (the time was re-serialised from
    int()): only the canonical digits are accepted."""
    body = sample_body()
    response = post(make_client(landing), body, signature(body, timestamp=NOW).replace("t=", "t=0"))
    assert (response.status_code, response.json()) == (400, {"error": "malformed_signature_header"})
    assert landed_bodies(landing) == []


def test_tampered_body_is_rejected(landing: Path):
    client = make_client(landing)
    body = sample_body()
    header = signature(body, timestamp=NOW)
    assert post(client, body.replace("1000", "1"), header).status_code == 400


def test_oversized_body_is_413_before_anything_else(landing: Path):
    client = make_client(landing, max_body_bytes=2048)
    body = body_of(event("evt_big", "invoice.updated", NOW, {**invoice("in_1"), "description": "x" * 4000}))
    response = post(client, body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (413, {"error": "body_too_large"})
    # a chunked body (no Content-Length) that grows past the limit is cut off too
    def chunks():
        yield body[:1500].encode()
        yield body[1500:].encode()
    response = client.post("/webhooks/stripe", content=chunks(), headers={"stripe-signature": signature(body, timestamp=NOW)})
    assert response.status_code == 413
    assert landed_bodies(landing) == []


def test_non_utf8_body_with_valid_signature_is_400(landing: Path):
    client = make_client(landing)
    raw = b'{"id": "evt_1", "note": "\xff\xfe"}'
    # the stripe helper signs str payloads only, so sign these exact bytes the way Stripe does
    mac = hmac.new(SECRET.encode(), f"{NOW}.".encode() + raw, hashlib.sha256).hexdigest()
    response = post(client, raw, f"t={NOW},v1={mac}")
    assert (response.status_code, response.json()) == (400, {"error": "not_utf8"})
    assert landed_bodies(landing) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"id": "evt_1", "type": ', "malformed_json"),
        ("[1, 2, 3]", "not_an_event"),
        ('{"id": "evt_1", "type": "x", "created": "soon", "data": {"object": {}}}', "not_an_event"),
        ('{"id": "evt_1", "type": "x", "created": 1, "data": {}}', "not_an_event"),
    ],
)
def test_malformed_payload_with_valid_signature_is_400(landing: Path, body: str, reason: str):
    client = make_client(landing)
    response = post(client, body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (400, {"error": reason})
    assert landed_bodies(landing) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # what Python's parser accepts but the warehouse cannot store or read at landing
        (sample_body(created=10**17), "not_an_event"),
        (sample_body(created=2**64), "not_an_event"),
        (sample_body(created=-1), "not_an_event"),
        ('{"id": "evt_1", "type": "x", "created": 1, "data": {"object": {"a": "\\ud800"}}}', "malformed_json"),
        ('{"id": "evt_1", "type": "x", "created": 1, "data": {"object": {"a": NaN}}}', "malformed_json"),
        # nesting too deep for the parser is a bad request, not a server error
        ("[" * 100_000 + "]" * 100_000, "malformed_json"),
        # a key written twice: Python keeps the last id, landing (DuckDB) the first, so the id
        # acknowledged would not be the id landed
        ('{"id": "evt_A", "id": "evt_B", "type": "x", "created": 1, "data": {"object": {}}}', "malformed_json"),
    ],
    ids=["created_1e17", "created_2_64", "created_negative", "lone_surrogate", "nan", "deep_nesting", "repeated_key"],
)
def test_json_that_landing_could_not_store_is_400_never_acknowledged(landing: Path, body: str, reason: str):
    client = make_client(landing)
    response = post(client, body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (400, {"error": reason})
    assert landed_bodies(landing) == []


def test_a_paired_surrogate_escape_is_accepted(landing: Path):
    body = body_of(event("evt_emoji", "invoice.finalized", NOW, {**invoice("in_1"), "description": "\U0001f600"}))
    assert "\\ud83d\\ude00" in body
    response = post(make_client(landing), body, signature(body, timestamp=NOW))
    assert response.status_code == 200
    assert landed_bodies(landing) == [body]


def test_rejects_are_counted_and_logged_without_body_or_signature(landing: Path, caplog):
    client = make_client(landing)
    body = sample_body()
    header = signature(body, secret="whsec_someone_else", timestamp=NOW)
    with caplog.at_level("INFO"):
        post(client, body, header)
        post(client, body, signature(body, timestamp=NOW - 1000))
        post(client, body, signature(body, timestamp=NOW))
    assert client.get("/healthz").json()["rejected"] == {"signature_mismatch": 1, "timestamp_too_old": 1}
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "webhook rejected" in text and "webhook landed" in text
    assert header.split("v1=")[1] not in text
    assert SECRET not in text and "whsec_" not in text
    assert "in_1" not in text  # no body content


def test_landing_failure_is_503_so_stripe_retries(tmp_path: Path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the landing folder should be")
    client = make_client(blocker / "landing")
    body = sample_body()
    response = post(client, body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (503, {"error": "landing_failed"})
    assert client.get("/healthz").json()["landing_failures"] == 1


def test_only_post_on_the_webhook_path(landing: Path):
    client = make_client(landing)
    assert client.get("/webhooks/stripe").status_code == 405
    assert client.get("/healthz").status_code == 200


def test_a_trailing_slash_is_served_not_redirected(landing: Path):
    """Stripe counts every 3xx as a failed delivery and does not follow it ("All response codes
    outside this range, including 3xx codes, will indicate to Stripe that you did not receive the
    webhook"), so an endpoint registered as `/webhooks/stripe/` must land the event itself, and no
    other path may answer with a redirect."""
    client = make_client(landing)
    body = sample_body()
    response = client.post(
        "/webhooks/stripe/",
        content=body,
        headers={"content-type": "application/json", "stripe-signature": signature(body, timestamp=NOW)},
        follow_redirects=False,
    )
    assert (response.status_code, response.json()) == (200, {"received": True, "id": "evt_1"})
    assert landed_bodies(landing) == [body]
    assert client.get("/healthz/", follow_redirects=False).status_code == 404
    assert client.post("/webhooks/stripe//", content=body, follow_redirects=False).status_code == 404


def test_receiver_refuses_to_start_without_secret(landing: Path):
    with pytest.raises(ValueError):
        create_app(ReceiverSettings(secrets=[], landing_dir=landing))
