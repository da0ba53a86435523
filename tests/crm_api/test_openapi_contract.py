"""The OpenAPI document is a contract: the served one must equal the committed one."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
from typer.testing import CliRunner

from crm_api.contract import breaking_changes, diff_openapi, render_report
from crmbench.cli import app
from tests.conftest import REPO_ROOT, RunningServer

COMMITTED = REPO_ROOT / "docs" / "openapi.json"


def _served(crm_api: RunningServer) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{crm_api.base_url}/openapi.json").json()
    return document


def test_served_document_equals_the_committed_contract(crm_api: RunningServer) -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    served = _served(crm_api)
    if served != committed:
        report = render_report(diff_openapi(committed, served))
        raise AssertionError(
            "The served OpenAPI document differs from docs/openapi.json:\n"
            f"{report}\nIf the change is intended, run `crmbench openapi export`."
        )


def test_every_tool_is_an_operation_with_its_name_and_kind(crm_api: RunningServer) -> None:
    from crm_api.tools import TOOLS

    paths = _served(crm_api)["paths"]
    for name, registered in TOOLS.items():
        operation = paths[f"/tools/{name}"]["post"]
        assert operation["operationId"] == name
        assert operation["x-tool-kind"] == registered.kind.value
        assert "Example" in operation["description"]
        assert {"200", "401", "403", "404", "409", "422"} <= set(operation["responses"])


def test_breaking_changes_are_named(crm_api: RunningServer) -> None:
    served = _served(crm_api)
    changed = copy.deepcopy(served)
    del changed["paths"]["/tools/create_quote"]
    schemas = changed["components"]["schemas"]
    schemas["CreateOpportunity"]["required"].append("close_date")
    del schemas["ClientOut"]["properties"]["owner"]
    schemas["ClientOut"]["required"].remove("owner")
    report = render_report(breaking_changes(served, changed))
    assert "removed-operation: POST /tools/create_quote" in report
    assert "new-required-field: POST /tools/create_new_opportunity request body .close_date" in (
        report
    )
    assert "removed-field: POST /tools/create_new_client response 200 .owner" in report


def test_cli_check_fails_and_reports_on_a_changed_contract(tmp_path: Any) -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    runner = CliRunner()
    ok = runner.invoke(app, ["openapi", "check", "--against", str(COMMITTED)])
    assert ok.exit_code == 0, ok.output
    committed["paths"]["/tools/old_tool"] = copy.deepcopy(committed["paths"]["/tools/create_quote"])
    committed["paths"]["/tools/old_tool"]["post"]["operationId"] = "old_tool"
    stale = tmp_path / "openapi.json"
    stale.write_text(json.dumps(committed), encoding="utf-8")
    result = runner.invoke(app, ["openapi", "check", "--against", str(stale)])
    assert result.exit_code == 1
    assert "removed-operation: POST /tools/old_tool" in result.output


def test_the_docs_list_every_tool() -> None:
    from crm_api.tools import TOOLS

    text = (REPO_ROOT / "docs" / "crm_api.md").read_text(encoding="utf-8")
    missing = [name for name in TOOLS if f"| `{name}` |" not in text]
    assert not missing, f"docs/crm_api.md does not list: {missing}"
