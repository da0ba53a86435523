"""The golden cases a run plays: the corpus folder its config names, loaded once per
process and shared by every run on that folder."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from agent_runner.run.config import RunConfig
from crmbench_contracts.cases import Case
from crmbench_corpus.store import default_corpus_dir, load_cases, load_manifest


def corpus_dir_of(config: RunConfig) -> Path:
    """The run's corpus folder: its `corpus_dir` (relative to the repository), else the
    committed corpus."""
    return config.resolve_path(config.corpus_dir) if config.corpus_dir else default_corpus_dir()


@dataclass(frozen=True)
class RunCorpus:
    """Every case of one corpus folder, in file order, and its manifest's content hash."""

    directory: Path
    cases: list[Case]
    content_hash: str
    index: dict[str, Case] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {case.case_id: case for case in self.cases})

    @classmethod
    def load(cls, directory: Path) -> RunCorpus:
        """Raises FileNotFoundError (no cases.jsonl) or ValueError (a bad line)."""
        cases = load_cases(directory)
        content_hash = str(load_manifest(directory).get("content_hash", "unknown"))
        return cls(directory, cases, content_hash)


class CorpusCatalog:
    """Corpora by folder, each loaded on first use (off the event loop) and then kept."""

    def __init__(self, preloaded: RunCorpus | None = None) -> None:
        self._corpora: dict[Path, RunCorpus] = {}
        self._lock = asyncio.Lock()
        if preloaded is not None:
            self._corpora[preloaded.directory] = preloaded

    async def get(self, directory: Path) -> RunCorpus:
        """The corpus of an absolute folder (as `corpus_dir_of` gives it)."""
        async with self._lock:
            corpus = self._corpora.get(directory)
            if corpus is None:
                corpus = await asyncio.to_thread(RunCorpus.load, directory)
                self._corpora[directory] = corpus
            return corpus

    async def for_config(self, config: RunConfig) -> RunCorpus:
        return await self.get(corpus_dir_of(config))
