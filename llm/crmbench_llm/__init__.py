"""LLM providers, message and tool types, retries, prices and the scripted fake."""
