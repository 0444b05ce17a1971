"""The sandbox's state: objects by id, the clock, recorded events, and optional JSON persistence.

Everything mutable sits behind one re-entrant lock (``State.lock``); request handlers take it for
the whole of their work, so each API call is atomic, as it is at Stripe.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

API_VERSION = "2026-08-26.dahlia"
_ALPHABET = string.ascii_letters + string.digits


@dataclass
class SandboxConfig:
    """Start options. Durations are seconds."""

    api_key: str | None = None  # None: accept any sk_test_ key
    state_file: str | None = None
    grace_period: int = 3600  # draft -> finalize delay for period-end invoices
    payment_retry_days: tuple[int, ...] = (3, 5, 7)  # automatic retries after a failed payment
    after_final_failure: str = "past_due"  # past_due | unpaid | canceled | mark_uncollectible
    webhook_retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0)  # real seconds between tries
    webhook_timeout: float = 5.0
    idempotency_ttl: int = 24 * 3600
    identifier_ttl: int = 24 * 3600
    events_window: int = 30 * 24 * 3600
    now: int | None = None  # freeze the sandbox clock at this unix time
    seed: int | None = None  # seeds fault rates
    faults: list[dict[str, Any]] = field(default_factory=list)
    summary_lag: int = 0  # seconds before a received meter event shows in event summaries
    save_interval: float = 5.0  # seconds between state-file saves while serving
    minimum_charge: dict[str, int] | None = None  # currency -> minor units; None: Stripe's (billing.MINIMUM_CHARGE)


class Clock:
    """The sandbox clock: real time unless frozen with :meth:`set`."""

    def __init__(self, frozen: int | None = None) -> None:
        self.frozen = frozen

    def now(self) -> int:
        return self.frozen if self.frozen is not None else int(time.time())

    def set(self, value: int | None) -> None:
        self.frozen = value


def new_id(prefix: str, length: int = 14) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


KINDS = {
    "cus_": "customer",
    "prod_": "product",
    "price_": "price",
    "sub_": "subscription",
    "si_": "subscription_item",
    "mtr_": "billing.meter",
    "in_": "invoice",
    "il_": "line_item",
    "ii_": "invoiceitem",
    "evt_": "event",
    "we_": "webhook_endpoint",
    "clock_": "test_helpers.test_clock",
}


RENDERERS: dict[str, Callable[["State", dict[str, Any], dict[str, Any]], dict[str, Any]]] = {}


class State:
    """All objects the sandbox holds, plus side tables for behaviour that is not an API field."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.clock = Clock(config.now)
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS.values()}
            self.meter_events: dict[str, dict[str, list[dict[str, Any]]]] = {}  # event_name -> customer -> records
            self.identifiers: dict[str, dict[str, Any]] = {}  # identifier -> record
            # events taken but counted nowhere (unknown meter or customer): their identifiers are still taken
            self.uncounted_events: list[dict[str, Any]] = []
            self.meter_errors: list[dict[str, Any]] = []
            self.adjustments: list[dict[str, Any]] = []
            self.payment_behavior: dict[str, str] = {}  # customer id -> succeeds|fails|fails_then_succeeds
            self.webhook_secrets: dict[str, str] = {}
            self.invoice_seq: dict[str, int] = {}
            self.deleted_customers: list[str] = []
            self.sequence = 0
            self.dirty = True

    # -- objects -------------------------------------------------------------------------------
    def next_seq(self) -> int:
        self.sequence += 1
        return self.sequence

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["object"]][obj["id"]] = obj
        self.dirty = True
        return obj

    def get(self, kind: str, ident: str) -> dict[str, Any] | None:
        return self.objects[kind].get(ident)

    def find(self, ident: str) -> dict[str, Any] | None:
        """Any object by id (for expansion)."""
        for prefix, kind in KINDS.items():
            if ident.startswith(prefix):
                return self.objects[kind].get(ident)
        return None

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Objects of one kind, newest first (Stripe's list order)."""
        return list(reversed(self.objects[kind].values()))

    def render(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The public (API) form of a stored object: a copy without internal ``_`` keys, with
        nested lists (subscription items, invoice lines) filled in by the kind's renderer."""
        public = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        renderer = RENDERERS.get(obj.get("object", ""))
        return renderer(self, obj, public) if renderer else public

    # -- time ----------------------------------------------------------------------------------
    def now(self) -> int:
        return self.clock.now()

    def customer_now(self, customer_id: str | None) -> int:
        """The customer's test clock frozen_time when attached to one, else the sandbox clock."""
        customer = self.get("customer", customer_id) if customer_id else None
        if customer and customer.get("test_clock"):
            clock = self.get("test_helpers.test_clock", customer["test_clock"])
            if clock:
                return clock["frozen_time"]
        return self.now()

    # -- events --------------------------------------------------------------------------------
    def record_event(
        self,
        type_: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an Event for a state change and hand it to webhook delivery."""
        event = {
            "id": new_id("evt_", 24),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": self.render(obj)},
            "livemode": False,
            "pending_webhooks": 0,
            "request": request or {"id": None, "idempotency_key": None},
            "type": type_,
        }
        if previous is not None:
            event["data"]["previous_attributes"] = copy.deepcopy(previous)
        self.add(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    # -- persistence ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(self.dumps())

    def dumps(self) -> str:
        """The whole state as JSON text (taken under the lock)."""
        with self.lock:
            return json.dumps(
                {
                    "version": 1,
                    "clock": self.clock.frozen,
                    "objects": self.objects,
                    "meter_events": self.meter_events,
                    "meter_errors": self.meter_errors,
                    "uncounted_events": self.uncounted_events,
                    "adjustments": self.adjustments,
                    "payment_behavior": self.payment_behavior,
                    "webhook_secrets": self.webhook_secrets,
                    "invoice_seq": self.invoice_seq,
                    "deleted_customers": self.deleted_customers,
                    "sequence": self.sequence,
                },
                # no sort_keys: each kind's objects are kept in creation order, which lists (newest
                # first), the pending items an invoice takes (oldest first) and billing's ties read
            )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state atomically (temp file + rename), readable by its owner only: it holds the
        webhook endpoints' signing secrets (`whsec_...`), as Stripe's own store does."""
        with self.lock:
            text = self.dumps()
            self.dirty = False
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover of a killed save may have been made with looser permissions
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(text)
        os.replace(tmp, target)

    def load(self, path: str | os.PathLike[str]) -> None:
        data = json.loads(Path(path).read_text())
        with self.lock:
            self.reset()
            if self.config.now is None:
                self.clock.set(data.get("clock"))
            for kind, objs in data["objects"].items():
                self.objects.setdefault(kind, {}).update(objs)
            self.meter_events = data["meter_events"]
            self.meter_errors = data["meter_errors"]
            self.uncounted_events = data.get("uncounted_events", [])
            self.adjustments = data["adjustments"]
            self.payment_behavior = data["payment_behavior"]
            self.webhook_secrets = data["webhook_secrets"]
            self.invoice_seq = data["invoice_seq"]
            self.deleted_customers = data.get("deleted_customers", [])
            self.sequence = data["sequence"]
            counted = (r for by_customer in self.meter_events.values() for rs in by_customer.values() for r in rs)
            for record in sorted([*counted, *self.uncounted_events], key=lambda r: r["seq"]):
                self.identifiers[record["identifier"]] = record
            self.dirty = False
