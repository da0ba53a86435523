"""Agents the runner can drive: LLM tool loop (student/teacher), oracle, random."""
