"""A sample of the committed corpus, validated against the real CRM API and verifier."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from crm_api.database import create_engine
from crm_api.world_store import load_golden_cases
from crmbench.local_services import running_verifier
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_corpus.store import case_line, default_corpus_dir, load_cases
from crmbench_corpus.validation import ServiceClients, validate_cases
from tests.conftest import ADMIN_KEY, RunningServer


def _sample(cases: list[Case]) -> list[Case]:
    """Two cases of every task category and of every failure category."""
    seen: dict[str, int] = {}
    picked = []
    for case in cases:
        key = case.failure.category if case.failure else case.task_category
        if seen.get(key, 0) < 2:
            seen[key] = seen.get(key, 0) + 1
            picked.append(case)
    return picked


@pytest.fixture(scope="module")
def verifier_url(crm_api: RunningServer) -> Iterator[str]:
    with running_verifier(crm_api.base_url, ADMIN_KEY, str(default_corpus_dir())) as url:
        yield url


async def test_sampled_cases_are_solvable_and_not_trivial(
    crm_api: RunningServer, database_url: str, verifier_url: str
) -> None:
    cases = _sample(load_cases())
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        rows = [(c.case_id, json.loads(case_line(c))) for c in cases]
        await load_golden_cases(engine, rows, "test")
    finally:
        await engine.dispose()
    async with (
        CrmApiClient(crm_api.base_url, ADMIN_KEY, timeout=60) as crm,
        VerifierClient(verifier_url, ADMIN_KEY, timeout=60) as verifier,
    ):
        results = await validate_cases(ServiceClients(crm, verifier), cases,
                                       concurrency=4)  # fmt: skip
    misses = [(r.case.case_id, run.kind, run.detail) for r in results for run in r.runs
              if not run.ok]  # fmt: skip
    assert not misses
    kinds = {run.kind for r in results for run in r.runs}
    assert kinds == {"reference", "noop", "trap"}
