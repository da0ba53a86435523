"""How the runner talks to a model about tools: result messages and per-call headers.

A tool result goes back to the model as the JSON text of the CRM API's answer: the
response body on success, `{"status": <code>, "error": {...}}` on a refusal, so the model
sees the machine code, the field and the allowed values. The simulated LLM parses the
same text back with `parse_tool_result`.
"""

from __future__ import annotations

import json
from typing import Any

CASE_HEADER = "X-Crmbench-Case-Id"
"""Sent on every model call of an episode by agents built with `send_case_headers`
(the simulated agent only): which case the episode is, so the simulated LLM knows the
case's intent. Real models never get it."""
TRIAL_HEADER = "X-Crmbench-Trial"
"""Sent with CASE_HEADER: the trial number, so a seeded policy differs per trial."""


def tool_result_content(status: int, body: Any) -> str:
    """The text of the tool message answering a call that got `status` and `body`."""
    if 200 <= status < 300:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    error = body.get("error") if isinstance(body, dict) else None
    payload = {"status": status, "error": error if error is not None else body}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def parse_tool_result(content: str) -> tuple[bool, Any]:
    """(ok, body) from a tool message written by `tool_result_content`: on a refusal the
    body is the error object (code, field, message)."""
    try:
        value = json.loads(content)
    except ValueError:
        return False, {"code": "UNPARSEABLE", "message": content[:200]}
    if isinstance(value, dict) and set(value) == {"status", "error"}:
        return False, value["error"]
    return True, value
