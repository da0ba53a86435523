"""The simulated LLM: a seeded offline policy served as an OpenAI-compatible endpoint.

It stands in for an imperfect model in end-to-end tests of the loop and the metrics,
where its configured error rates and guidance effects are the known truth. It is never
reported as a model result.
"""

from __future__ import annotations

from agent_runner.simulated.config import (
    GuidedRate,
    MistakeRule,
    SimulatedLLMConfig,
    SuccessRule,
    default_config_path,
)
from agent_runner.simulated.policy import (
    Decision,
    MalformedConversation,
    PlannedCall,
    SimulatedLLMError,
    SimulatedPolicy,
    SimulatedTurn,
    UnknownCase,
    default_openapi_path,
    expected_pass_probability,
    load_write_tools,
    uniform_draw,
)
from agent_runner.simulated.server import create_simulated_app, running_simulated_llm

__all__ = [
    "Decision",
    "GuidedRate",
    "MalformedConversation",
    "MistakeRule",
    "PlannedCall",
    "SimulatedLLMConfig",
    "SimulatedLLMError",
    "SimulatedPolicy",
    "SimulatedTurn",
    "SuccessRule",
    "UnknownCase",
    "create_simulated_app",
    "default_config_path",
    "default_openapi_path",
    "expected_pass_probability",
    "load_write_tools",
    "running_simulated_llm",
    "uniform_draw",
]
