"""Baselines that need no model: the oracle (replays the case's reference actions) and a
seeded random agent (tools and arguments drawn from the tool schemas)."""

from __future__ import annotations

import hashlib
import random
import string
from datetime import date, timedelta
from typing import Any

from agent_runner.agents.base import AgentResult, EpisodeContext, EpisodeLimitReached
from crmbench_corpus.replay import ReplayError, resolve


class OracleAgent:
    """Replays `expected.reference_actions` (resolving {{step_N.path}} references) and
    answers with the reference reply: it proves the harness and every case."""

    name = "oracle"
    model: str | None = None

    async def aclose(self) -> None:
        """Nothing to close: no model."""

    async def run(self, ctx: EpisodeContext) -> AgentResult:
        results: list[Any] = []
        try:
            for action in ctx.case.expected.reference_actions:
                try:
                    args = resolve(action.args, results)
                except ReplayError as exc:
                    return AgentResult("", "agent_error", f"reference action {action.tool}: {exc}")
                outcome = await ctx.call_tool(action.tool, args)
                results.append(outcome.body if outcome.ok else None)
        except EpisodeLimitReached as limit:
            return AgentResult("", limit.outcome, str(limit))
        return AgentResult(ctx.case.expected.reference_reply)


def episode_rng(seed: int, case_id: str, trial: int, purpose: str) -> random.Random:
    """A generator that depends only on (seed, case, trial, purpose): reruns and other
    runner processes draw the same numbers for the same episode."""
    digest = hashlib.sha256(f"{seed}|{case_id}|{trial}|{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class RandomAgent:
    """Calls 1..max_calls random tools with arguments drawn from their JSON schemas, then
    replies with filler. The floor any real agent must clear."""

    name = "random"
    model: str | None = None

    def __init__(self, max_calls: int = 5) -> None:
        self.max_calls = max_calls

    async def aclose(self) -> None:
        """Nothing to close: no model."""

    async def run(self, ctx: EpisodeContext) -> AgentResult:
        rng = episode_rng(ctx.seed, ctx.case.case_id, ctx.trial, "random-agent")
        try:
            for _ in range(rng.randint(1, self.max_calls)):
                tool = rng.choice(ctx.tools)
                args = random_value(tool.parameters, rng)
                await ctx.call_tool(tool.name, args if isinstance(args, dict) else {})
        except EpisodeLimitReached as limit:
            return AgentResult("", limit.outcome, str(limit))
        words = ["done", "updated", "record", "ok", "client", "saved"]
        return AgentResult(" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))))


def random_value(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A value that roughly fits `schema` (enums, types, required fields), often not valid:
    a random agent should mostly get refused."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return random_value(rng.choice(schema[key]), rng, depth)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 3:
            return {}
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        return {
            name: random_value(sub, rng, depth + 1)
            for name, sub in properties.items()
            if name in required or rng.random() < 0.3
        }
    if kind == "array":
        return [
            random_value(schema.get("items", {}), rng, depth + 1) for _ in range(rng.randint(0, 2))
        ]
    if kind == "integer":
        return rng.randint(-10, 200_000)
    if kind == "number":
        return round(rng.uniform(-10, 200_000), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if schema.get("format") == "date":
        return (date(2025, 1, 1) + timedelta(days=rng.randint(0, 730))).isoformat()
    length = rng.randint(3, 12)
    return "".join(rng.choice(string.ascii_letters) for _ in range(length))
