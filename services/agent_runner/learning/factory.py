"""Builds what a run's `learning:` settings need: the teacher, the escalation agent and
the episode hooks (`run_learning_hooks`), for `crmbench run` and the runner service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from agent_runner.agents.base import Agent
from agent_runner.agents.factory import SIMULATED_MODEL, simulated_provider_config
from agent_runner.agents.llm_agent import LLMAgent, SystemPrompt
from agent_runner.learning.loop import learning_hooks
from agent_runner.learning.retrieval import RetrievalHooks
from agent_runner.learning.teacher import Teacher
from agent_runner.run.config import RunConfig
from crmbench_llm import PriceTable, make_provider


def build_teacher(config: RunConfig) -> Teacher | None:
    """The run's teacher: None unless `learning.mode` is `on`; the simulated teacher
    (`learning.teacher: simulated`) or the model of `providers.teacher`. Raises
    ConfigError / MissingApiKey / SimulatedTeacherConfigError naming what is wrong."""
    if config.learning.mode != "on":
        return None
    if config.learning.teacher == "simulated":
        from agent_runner.learning.simulated_teacher import SimulatedTeacher

        return SimulatedTeacher.from_yaml(config.resolve_path(config.learning.simulated_teacher))
    from agent_runner.learning.llm_teacher import build_teacher as build_llm_teacher

    return build_llm_teacher(config)


def build_escalation_agent(config: RunConfig, simulated_url: str | None) -> Agent | None:
    """The agent that plays an escalated episode (the teacher acting, its steps recorded
    as the teacher's): the `providers.teacher` model; with the simulated teacher, the
    simulated LLM (so escalation in a simulated run is no model result either). None
    unless `learning.mode` is `on`, or when the simulated LLM is not running (the loop
    then coaches instead of escalating, and says so)."""
    if config.learning.mode != "on":
        return None
    prompt = SystemPrompt.from_file(config.resolve_path(config.prompt))
    prices = PriceTable.from_yaml(config.resolve_path(config.prices))
    if config.learning.teacher == "simulated":
        if simulated_url is None:
            return None
        provider = make_provider(simulated_provider_config(simulated_url), prices)
        return LLMAgent(
            "teacher", provider, SIMULATED_MODEL, prompt, audience="teacher", send_case_headers=True
        )
    provider_config = config.provider_for("teacher")
    return LLMAgent(
        "teacher",
        make_provider(provider_config, prices),
        provider_config.model,
        prompt,
        audience="teacher",
    )


@asynccontextmanager
async def run_learning_hooks(
    config: RunConfig, pool: asyncpg.Pool, *, run_id: str, simulated_url: str | None = None
) -> AsyncIterator[RetrievalHooks | None]:
    """`learning_hooks` with the run's teacher and escalation agent, closed on exit."""
    teacher = build_teacher(config)
    escalation = build_escalation_agent(config, simulated_url) if teacher is not None else None
    writes: frozenset[str] = frozenset()
    if teacher is not None:
        from agent_runner.simulated.policy import load_write_tools

        writes = load_write_tools()
    try:
        async with learning_hooks(
            config.learning,
            pool,
            run_id=run_id,
            teacher=teacher,
            escalation_agent=escalation,
            write_tools=writes,
        ) as hooks:
            yield hooks
    finally:
        if teacher is not None:
            await teacher.aclose()
        if escalation is not None:
            await escalation.aclose()
