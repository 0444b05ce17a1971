"""Fixtures for the sandbox's own tests: every API response a test provokes is checked against
Stripe's OpenAPI description when the test ends."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterator

import jsonschema
import pytest

from metering.stripe_sandbox import spec
from metering.stripe_sandbox.testing import SandboxHandle, running_sandbox


def ts(text: str) -> int:
    """'2026-10-01T00:00:00' (UTC) -> unix seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


class Recorder:
    def __init__(self) -> None:
        self.responses: list[tuple[str, str, int, bytes]] = []

    def __call__(self, method: str, path: str, status: int, body: bytes) -> None:
        self.responses.append((method, path, status, body))

    def problems(self) -> list[str]:
        found = []
        for method, path, status, body in self.responses:
            try:
                spec.validate_response(method, path, status, json.loads(body))
            except LookupError as exc:
                found.append(f"{method} {path}: {exc}")
            except Exception as exc:  # jsonschema.ValidationError
                while getattr(exc, "context", None):
                    exc = jsonschema.exceptions.best_match(exc.context)
                where = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
                found.append(f"{method} {path} -> {status}: at {where}: {getattr(exc, 'message', exc)}"[:600])
        return found


def start(**options: Any):
    return running_sandbox(**options)


@pytest.fixture
def sb() -> Iterator[SandboxHandle]:
    """A fresh sandbox whose every /v1 response must validate against the spec (strict)."""
    recorder = Recorder()
    with running_sandbox() as handle:
        handle.sandbox.observers.append(recorder)
        handle.recorder = recorder  # type: ignore[attr-defined]
        yield handle
    problems = recorder.problems()
    assert not problems, "responses that do not match the OpenAPI description:\n" + "\n".join(problems[:20])


@pytest.fixture
def client(sb: SandboxHandle):
    return sb.client()
