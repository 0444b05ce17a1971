"""Stripe-shaped API errors: ``{"error": {"type", "code", "message", "param", "doc_url"}}``."""

from __future__ import annotations

from typing import Any


class StripeAPIError(Exception):
    """An error answered to the client in Stripe's error shape.

    ``store`` says whether an idempotent request's key remembers this response: Stripe does not
    store results of requests that fail parameter validation or collide with another request.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        store: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.store = store
        self.extra = extra or {}

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        if request_id:
            error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        error.update(self.extra)
        return {"error": error}


def invalid(message: str, param: str | None = None, *, code: str | None = "parameter_invalid", store: bool = False) -> StripeAPIError:
    """400 for a bad parameter (not stored under an idempotency key)."""
    return StripeAPIError(400, message, code=code, param=param, store=store)


def missing_param(param: str) -> StripeAPIError:
    return StripeAPIError(400, f"Missing required param: {param}.", code="parameter_missing", param=param, store=False)


def not_found(kind: str, ident: str, param: str = "id") -> StripeAPIError:
    return StripeAPIError(404, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def unrecognized_url(method: str, path: str) -> StripeAPIError:
    return StripeAPIError(404, f"Unrecognized request URL ({method}: {path}).", store=False)


def authentication(message: str) -> StripeAPIError:
    return StripeAPIError(401, message, store=False)


def rate_limited(reason: str, message: str | None = None, headers: dict[str, str] | None = None) -> StripeAPIError:
    """429 with Stripe's `Stripe-Rate-Limited-Reason` header (and any further `headers`); never stored
    under an idempotency key, since a retry with the same key must be tried again."""
    return StripeAPIError(
        429,
        message
        or "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers={"Stripe-Rate-Limited-Reason": reason, **(headers or {})},
        store=False,
    )


def not_modelled(operation: str) -> StripeAPIError:
    """400 for an operation of Stripe's API the sandbox does not implement: named, so a caller is not
    misled by an answer from another operation (retrieve for ``/search``, update for ``/create_preview``)."""
    return StripeAPIError(
        400, f"The Stripe sandbox does not model {operation}: this operation is not modelled by the sandbox.", store=False
    )
