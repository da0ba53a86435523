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
    WRITE_TOOLS,
    Decision,
    MalformedConversation,
    PlannedCall,
    SimulatedLLMError,
    SimulatedPolicy,
    SimulatedTurn,
    UnknownCase,
    expected_pass_probability,
    uniform_draw,
)
from agent_runner.simulated.server import create_simulated_app, running_simulated_llm

__all__ = [
    "WRITE_TOOLS",
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
    "expected_pass_probability",
    "running_simulated_llm",
    "uniform_draw",
]
