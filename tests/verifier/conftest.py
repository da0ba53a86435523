"""Fixtures of the verifier tests: a verifier served by uvicorn in a thread, over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from crmbench_clients.serving import serving_in_thread
from tests.conftest import ADMIN_KEY


def keyed() -> dict[str, str]:
    """The header the verifier's scoring routes need: its key (the admin key by default)."""
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Served:
    """Starts apps and stops them all at the end of the test."""

    stack: contextlib.ExitStack

    def __call__(self, app: FastAPI) -> str:
        return self.stack.enter_context(serving_in_thread(app, "verifier"))


@pytest.fixture
def served() -> Iterator[Served]:
    """`served(app)` serves an app for this test and returns its base URL."""
    with contextlib.ExitStack() as stack:
        yield Served(stack)
