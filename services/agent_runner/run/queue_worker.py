"""The runner service's background worker: it plays the oldest open run of the shared
Postgres queue, then the next, so every replica (and every `crmbench run` process on the
same database) shares every run without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from agent_runner.agents.base import Agent
from agent_runner.agents.factory import build_agent
from agent_runner.learning.factory import run_learning_hooks
from agent_runner.learning.memory import PlaybookError
from agent_runner.run.config import ConfigError, RunConfig, first_problem
from agent_runner.run.corpus import CorpusCatalog, RunCorpus
from agent_runner.run.runner import RunFiles, RunStopped, work_on_run
from agent_runner.run.store import RunRow, RunStore
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.verifier import VerifierClient
from crmbench_learning.embeddings import EmbeddingError
from crmbench_llm.base import LLMError

logger = logging.getLogger(__name__)

AGENT_BUILD_ERRORS = (ConfigError, LLMError, OSError, ValueError)
"""What building a run's agent raises when the run cannot be played here as configured
(a missing API key, an unreadable prompt or price file, a bad stored config)."""
LEARNING_BUILD_ERRORS = (EmbeddingError, LLMError, PlaybookError)
"""What building a run's learning hooks raises when they cannot run here (a missing
embedding model or key, a memory holding this embedder's vectors of another size)."""


def describe(exc: BaseException) -> str:
    """One line naming what went wrong (pydantic errors: the first bad field)."""
    if isinstance(exc, ValidationError):
        return first_problem(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class SimulatedLLMs:
    """In-process simulated LLM servers, one per (simulated config file, corpus), started
    the first time a run needs one and kept for the service's lifetime."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._urls: dict[tuple[Path, Path], str] = {}
        self._lock = asyncio.Lock()

    async def url_for(self, config: RunConfig, corpus: RunCorpus) -> str:
        from agent_runner.simulated.config import SimulatedLLMConfig
        from agent_runner.simulated.server import running_simulated_llm

        config_file = config.resolve_path(config.simulated.config)
        key = (config_file, corpus.directory)
        async with self._lock:
            url = self._urls.get(key)
            if url is None:
                sim_config = await asyncio.to_thread(SimulatedLLMConfig.from_yaml, config_file)
                server = running_simulated_llm(sim_config, corpus.index)
                url = await asyncio.to_thread(self._stack.enter_context, server)
                self._urls[key] = url
                logger.info("simulated LLM for %s at %s", config_file, url)
            return url

    async def close(self) -> None:
        await asyncio.to_thread(self._stack.close)


def trace_dir_for(run: RunRow, runs_dir: Path) -> Path | None:
    """Where this replica appends the run's JSONL traces: the run's own directory when
    this process can write there, else `<runs_dir>/<run_id>` (with a run.json, so that
    `crmbench results DIR` reads it); None (Postgres only) when neither is writable."""
    if run.out_dir:
        out = Path(run.out_dir)
        if out.is_dir() and os.access(out, os.W_OK):
            return out
    fallback = runs_dir / run.run_id
    try:
        fallback.mkdir(parents=True, exist_ok=True)
        files = RunFiles(fallback)
        if not files.run_file.exists():
            files.write(run)
    except OSError as exc:
        logger.warning("no trace directory for run %s: %s", run.run_id, exc)
        return None
    return fallback


class QueueWorker:
    """Loops forever: claims the oldest open run's episodes until none is left, then
    looks for the next run, sleeping `poll_seconds` when there is nothing to do."""

    def __init__(
        self,
        *,
        store: RunStore,
        corpora: CorpusCatalog,
        crm: CrmApiClient,
        verifier: VerifierClient,
        simulated: SimulatedLLMs,
        simulated_llm_url: str | None,
        runs_dir: Path,
        poll_seconds: float,
        name: str,
    ) -> None:
        self.store = store
        self.corpora = corpora
        self.crm = crm
        self.verifier = verifier
        self.simulated = simulated
        self.simulated_llm_url = simulated_llm_url
        self.runs_dir = runs_dir
        self.poll_seconds = poll_seconds
        self.name = name
        self.current_run: str | None = None
        self.simulated_url: str | None = None
        """The simulated LLM of the run being played (None when its agent is not simulated)."""

    async def agent_for(self, config: RunConfig, corpus: RunCorpus) -> Agent:
        simulated_url = None
        if config.agent == "simulated":
            simulated_url = config.simulated.url or self.simulated_llm_url
            if simulated_url is None:
                simulated_url = await self.simulated.url_for(config, corpus)
        self.simulated_url = simulated_url
        return build_agent(config, simulated_url=simulated_url)

    async def run_forever(self) -> None:
        while True:
            try:
                worked = await self.work_next()
            except Exception:  # a dead CRM API or database: wait, then try again
                logger.exception("runner worker cycle failed")
                worked = False
            if not worked:
                await asyncio.sleep(self.poll_seconds)

    async def work_next(self) -> bool:
        """Plays the oldest open run until its queue is empty; False when there is none."""
        run = await self.store.next_open_run()
        if run is None:
            return False
        try:
            config = RunConfig.model_validate(run.config)
            corpus = await self.corpora.for_config(config)
            agent = await self.agent_for(config, corpus)
        except AGENT_BUILD_ERRORS as exc:
            reason = f"this runner cannot play the run: {describe(exc)}"
            logger.error("run %s failed: %s", run.run_id, reason)
            await self.store.record_error(run.run_id, reason)
            return True
        self.current_run = run.run_id
        logger.info("worker %s playing run %s", self.name, run.run_id)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    hooks = await stack.enter_async_context(
                        run_learning_hooks(
                            config,
                            self.store.pool,
                            run_id=run.run_id,
                            simulated_url=self.simulated_url,
                        )
                    )
                except LEARNING_BUILD_ERRORS as exc:
                    reason = f"this runner cannot play the run's learning loop: {describe(exc)}"
                    logger.error("run %s failed: %s", run.run_id, reason)
                    await self.store.record_error(run.run_id, reason)
                    return True
                stats = await work_on_run(
                    store=self.store,
                    run_id=run.run_id,
                    config=config,
                    cases=corpus.index,
                    agent=agent,
                    crm=self.crm,
                    verifier=self.verifier,
                    trace_dir=trace_dir_for(run, self.runs_dir),
                    worker=self.name,
                    hooks=hooks,
                )
        except RunStopped as stopped:
            # A refused key or an unknown model: no replica with this configuration can
            # play the run. Its unplayed items stay queued for a resume.
            logger.error("%s", stopped)
            await self.store.record_error(run.run_id, str(stopped))
            return True
        finally:
            self.current_run = None
            await agent.aclose()
        if stats.failures:
            # A case missing from this corpus: no replica with it can finish the run.
            reason = "; ".join(stats.failures[:5])
            logger.error("run %s failed: %s", run.run_id, reason)
            await self.store.record_error(run.run_id, reason)
        return True
