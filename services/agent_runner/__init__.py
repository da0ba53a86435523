"""The agent runner: drives agents (LLM-backed or not) through benchmark episodes."""
