"""Tool subsetting (docs/learning.md, "Fewer tokens"): the 37 tool definitions are about
30 kB in every model call, so an episode may be offered only the tools it needs: those
its task category needs (config/tool_subsets.yaml), those its injected playbook entries
name, and every search tool. The agent gets the whole list from the moment it asks for a
tool outside the subset (`agent_runner.agents.llm_agent`), so the subset can cost a
call, never a capability.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crmbench_contracts.paths import CONFIG_DIR
from crmbench_contracts.playbooks import PlaybookEntry
from crmbench_llm.types import ToolSpec

DEFAULT_TOOL_SUBSETS = CONFIG_DIR / "tool_subsets.yaml"


class ToolSubsetError(ValueError):
    """The tool subsets file cannot be used; the message names the file and the field."""


class ToolSubsets(BaseModel):
    """The tools each task category needs, and the search tools every episode gets."""

    model_config = ConfigDict(extra="forbid")

    search_tools: list[str] = Field(default_factory=list)
    categories: dict[str, list[str]] = Field(default_factory=dict)
    """Task category (as the corpus spells it) -> the tools its task needs."""

    @classmethod
    def load(cls, path: Path | None = None) -> ToolSubsets:
        """The subsets in `path` (default config/tool_subsets.yaml). Raises
        ToolSubsetError for an unreadable file or a bad field."""
        source = path or DEFAULT_TOOL_SUBSETS
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
            return cls.model_validate(data)
        except OSError as exc:
            raise ToolSubsetError(f"cannot read {source}: {exc.strerror}") from exc
        except (yaml.YAMLError, ValidationError) as exc:
            raise ToolSubsetError(f"{source}: {exc}") from exc

    def subset(
        self, tools: Sequence[ToolSpec], category: str, entries: Sequence[PlaybookEntry]
    ) -> list[ToolSpec] | None:
        """The tools to offer first, in the order of `tools`: the category's, the entries'
        (their action's tools and argument rules' tools) and the search tools. None (the
        whole list) for a category the file does not list."""
        needed = self.categories.get(category)
        if needed is None:
            return None
        names = set(needed) | set(self.search_tools)
        for entry in entries:
            names.update(entry.action.tools)
            names.update(rule.tool for rule in entry.action.argument_rules)
        return [tool for tool in tools if tool.name in names]
