"""Episode rules that need no database: table selection, the seed-rows contract's boundary."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crm_api.domain import ENTITY_TABLES
from crm_api.episodes.schemas import EpisodeCreate
from crm_api.episodes.service import select_tables
from crm_api.errors import CrmError, ErrorCode
from crmbench_contracts.seeds import SeedRows


def test_table_selection_keeps_named_entity_tables_and_refuses_others() -> None:
    assert select_tables(None) is None
    assert select_tables(" note , client ,") == ["note", "client"]
    for spec in ("client,invoice", " , "):
        with pytest.raises(CrmError) as refused:
            select_tables(spec)
        assert refused.value.code == ErrorCode.INVALID_ENUM
        assert refused.value.field == "tables"
        assert refused.value.allowed == list(ENTITY_TABLES)


def test_episode_seeds_are_validated_by_the_shared_contract() -> None:
    request = EpisodeCreate.model_validate({"seed": {"client": [{"client_id": "c1", "name": "A"}]}})
    assert isinstance(request.seed, SeedRows)
    assert request.seed.client[0].status == "Prospect"


def test_the_seed_rows_contract_imports_nothing_of_the_crm_api() -> None:
    probe = "import sys, crmbench_contracts.seeds; print(sorted(m for m in sys.modules if m.split('.')[0] == 'crm_api'))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
