"""The sandbox-only control API (JSON, no auth, loopback): clock, faults, request log, webhook
delivery log, payment behaviour, config, state dump, reset.

| method & path | body / query | effect |
| --- | --- | --- |
| GET  /_sandbox/health | | ``{"ok": true}`` |
| GET  /_sandbox/now | | ``{"now": <sandbox clock>, "frozen": bool}`` |
| POST /_sandbox/now | ``{"now": unix or null}`` | freeze the sandbox clock (null: real time); runs due billing |
| POST /_sandbox/tick | | run due billing for customers without a test clock |
| GET/POST/DELETE /_sandbox/faults | POST: a fault rule (see faults.py) | list / add / clear |
| POST /_sandbox/faults/release | | let requests held by ``slow`` faults continue now |
| GET/DELETE /_sandbox/requests | | the request log (method, path, idempotency_key, status, fault, replayed) |
| GET  /_sandbox/webhook_deliveries | | every delivery attempt; ``pending`` = queued deliveries |
| POST /_sandbox/customers/{id}/payment_behavior | ``{"payment_behavior": "succeeds"/"fails"/"fails_then_succeeds"}`` | card behaviour |
| POST /_sandbox/config | any of grace_period, payment_retry_days, after_final_failure, webhook_retry_delays, webhook_timeout, identifier_ttl, summary_lag | change settings |
| GET  /_sandbox/meter_errors | | meter events accepted but not counted (no meter, unknown customer) |
| GET  /_sandbox/state | | the full state snapshot |
| POST /_sandbox/save | | write the state file now |
| POST /_sandbox/reset | | forget everything |
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .core_api import PAYMENT_BEHAVIORS

if TYPE_CHECKING:
    from .server import StripeSandbox

CONFIG_FIELDS = {
    "grace_period": int,
    "payment_retry_days": lambda v: tuple(int(x) for x in v),
    "after_final_failure": str,
    "webhook_retry_delays": lambda v: tuple(float(x) for x in v),
    "webhook_timeout": float,
    "identifier_ttl": int,
    "summary_lag": int,
}


def handle(sandbox: "StripeSandbox", method: str, path: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
    state = sandbox.state
    route = (method, path.rstrip("/"))
    if route == ("GET", "/_sandbox/health"):
        return 200, {"ok": True}
    if route == ("GET", "/_sandbox/now"):
        return 200, {"now": state.now(), "frozen": state.clock.frozen is not None}
    if route == ("POST", "/_sandbox/now"):
        value = body.get("now")
        with state.lock:
            state.clock.set(None if value is None else int(value))
            actions = sandbox.tick()
        return 200, {"now": state.now(), "frozen": state.clock.frozen is not None, "billing_actions": actions}
    if route == ("POST", "/_sandbox/tick"):
        return 200, {"billing_actions": sandbox.tick()}
    if route == ("GET", "/_sandbox/faults"):
        return 200, {"faults": sandbox.faults.describe()}
    if route == ("POST", "/_sandbox/faults"):
        sandbox.faults.add(body)
        return 200, {"faults": sandbox.faults.describe()}
    if route == ("POST", "/_sandbox/faults/release"):
        sandbox.faults.release()
        return 200, {"released": True}
    if route == ("DELETE", "/_sandbox/faults"):
        sandbox.faults.clear()
        return 200, {"faults": []}
    if route == ("GET", "/_sandbox/requests"):
        return 200, {"requests": sandbox.request_log()}
    if route == ("DELETE", "/_sandbox/requests"):
        with sandbox.requests_lock:
            sandbox.requests.clear()
        return 200, {"requests": []}
    if route == ("GET", "/_sandbox/webhook_deliveries"):
        with state.lock:
            deliveries = [dict(d) for d in sandbox.deliverer.log]
        return 200, {"deliveries": deliveries, "pending": len(sandbox.deliverer.queue), "idle": sandbox.deliverer.idle()}
    match = re.fullmatch(r"/_sandbox/customers/([^/]+)/payment_behavior", path)
    if match and method == "POST":
        behavior = body.get("payment_behavior")
        if behavior not in PAYMENT_BEHAVIORS:
            raise ValueError(f"payment_behavior must be one of {', '.join(PAYMENT_BEHAVIORS)}")
        with state.lock:
            if state.get("customer", match.group(1)) is None:
                return 404, {"error": f"no such customer {match.group(1)}"}
            state.payment_behavior[match.group(1)] = behavior
            state.dirty = True
        return 200, {"customer": match.group(1), "payment_behavior": behavior}
    if route == ("POST", "/_sandbox/config"):
        for name, value in body.items():
            if name not in CONFIG_FIELDS:
                raise ValueError(f"unknown config field {name}")
            setattr(sandbox.config, name, CONFIG_FIELDS[name](value))
        return 200, {name: getattr(sandbox.config, name) for name in CONFIG_FIELDS}
    if route == ("GET", "/_sandbox/meter_errors"):
        with state.lock:
            return 200, {"errors": list(state.meter_errors)}
    if route == ("GET", "/_sandbox/state"):
        return 200, state.snapshot()
    if route == ("POST", "/_sandbox/save"):
        if not sandbox.config.state_file:
            raise ValueError("the sandbox was started without a state file")
        sandbox.save()
        return 200, {"saved": sandbox.config.state_file}
    if route == ("POST", "/_sandbox/reset"):
        sandbox.reset()
        return 200, {"reset": True}
    return 404, {"error": f"unknown control endpoint {method} {path}"}
