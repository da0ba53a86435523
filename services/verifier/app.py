"""The verifier's FastAPI application: scores episodes against their golden cases.

POST /verify reads a live episode's final state and change log from the CRM API (admin
key, over HTTP) and returns its RewardRecord; POST /verify/state scores a state given
inline. Both need the verifier key (bearer); /health is open. The service never writes
CRM data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError, ServiceUnavailable
from crmbench_clients.http_errors import install_error_handlers
from crmbench_contracts.cases import Case
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.service_keys import check_bearer, require_strong_key
from crmbench_corpus.store import CASES_FILE, load_index
from verifier.errors import ErrorResponse, VerifierError, VerifierErrorCode, from_problem
from verifier.judges import Judge, JudgeFailed, JudgeOutcome, JudgeRequest, run_judges
from verifier.llm_judges import load_judges, load_prices
from verifier.schemas import (
    ChangeLog,
    EpisodeState,
    Health,
    InvalidEpisodeData,
    VerifyRequest,
    VerifyStateRequest,
    parse_changes,
    parse_state,
)
from verifier.scoring import change_summary, score_case
from verifier.settings import VerifierSettings

log = logging.getLogger("verifier")

try:
    __version__ = version("crm-bench")
except PackageNotFoundError:  # pragma: no cover (running from a source tree)
    __version__ = "0.0.0"

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer key was sent."},
    403: {"model": ErrorResponse, "description": "The bearer key is not the verifier key."},
    404: {"model": ErrorResponse, "description": "No such case or episode."},
    422: {"model": ErrorResponse, "description": "The request is not valid."},
    502: {"model": ErrorResponse, "description": "The CRM API or a judge failed."},
    503: {"model": ErrorResponse, "description": "No corpus or no admin key configured."},
}


class CaseCatalog:
    """The golden cases, loaded once; while no corpus file exists, every lookup retries."""

    def __init__(self, directory: Path, cases: Mapping[str, Case] | None = None) -> None:
        self.directory = directory
        self._cases: dict[str, Case] | None = dict(cases) if cases is not None else None
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    @property
    def count(self) -> int | None:
        return len(self._cases) if self._cases is not None else None

    async def load(self) -> None:
        async with self._lock:
            if self._cases is not None:
                return
            try:
                self._cases = await asyncio.to_thread(load_index, self.directory)
                self._problem = None
                log.info("loaded %d cases from %s", len(self._cases), self.directory)
            except FileNotFoundError:
                self._problem = (
                    f"No corpus at {self.directory / CASES_FILE}; generate it with "
                    "`crmbench cases generate` or set CRMBENCH_CORPUS_DIR."
                )
            except ValueError as exc:
                self._problem = f"The corpus cannot be read: {exc}"
                log.error("corpus not loaded: %s", exc)

    async def get(self, case_id: str) -> Case:
        if self._cases is None:
            await self.load()
        if self._cases is None:
            raise VerifierError(
                VerifierErrorCode.CORPUS_UNAVAILABLE,
                self._problem or "No corpus is loaded.",
                status_code=503,
            )
        case = self._cases.get(case_id)
        if case is None:
            raise VerifierError(
                VerifierErrorCode.CASE_NOT_FOUND,
                f"No case {case_id!r} in the corpus ({len(self._cases)} cases).",
                field="case_id",
                status_code=404,
            )
        return case


class VerifierServices:
    """Process-wide objects, created in the lifespan and shared by every request."""

    def __init__(
        self,
        settings: VerifierSettings,
        catalog: CaseCatalog,
        crm: CrmApiClient,
        judges: Sequence[Judge],
        arbiter: Judge | None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.crm = crm
        self.judges = list(judges)
        self.arbiter = arbiter

    async def read_episode(
        self, episode_id: str, tables: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, changes) of one episode from the CRM API, fetched concurrently; state
        limited to `tables`. CRM API failures are VerifierErrors."""
        if not self.settings.admin_key:
            raise VerifierError(
                VerifierErrorCode.NOT_CONFIGURED,
                "The verifier has no admin key for the CRM API; set CRMBENCH_ADMIN_KEY to "
                "the CRM API's admin key.",
                status_code=503,
            )
        try:
            state, changes = await asyncio.gather(
                self.crm.episode_state(episode_id, tables), self.crm.episode_changes(episode_id)
            )
        except ServiceError as exc:
            raise crm_api_failure(exc, self.crm.base_url, episode_id) from exc
        return state, changes

    async def score(
        self,
        case: Case,
        state: EpisodeState,
        changes: ChangeLog,
        final_reply: str,
        transcript: list[dict[str, Any]] | None,
        episode_id: str | None,
    ) -> RewardRecord:
        outcome: JudgeOutcome | None = None
        if self.judges:
            request = JudgeRequest(
                case=case,
                final_reply=final_reply,
                transcript=transcript or [],
                state_summary={"changes": change_summary(changes)},
            )
            try:
                outcome = await run_judges(
                    self.judges,
                    self.arbiter,
                    request,
                    max_spread=self.settings.judge_max_spread,
                    max_uncertainty=self.settings.judge_max_uncertainty,
                )
            except JudgeFailed as exc:
                raise VerifierError(
                    VerifierErrorCode.JUDGE_FAILED, str(exc), status_code=502
                ) from exc
        return score_case(
            case,
            state,
            changes,
            final_reply,
            episode_id=episode_id,
            judges=outcome,
            judge_weight=self.settings.judge_weight,
            pass_threshold=self.settings.pass_threshold,
        )


def tables_of(case: Case) -> list[str]:
    """The entity tables a case's checks read: only those are fetched from the CRM API."""
    found: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("table"), str):
                found.add(value["table"])
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(case.expected.model_dump(mode="json", exclude={"reference_actions"}))
    return sorted(found)


def crm_api_failure(error: ServiceError, base_url: str, episode_id: str) -> VerifierError:
    """What the verifier answers when reading an episode from the CRM API failed."""
    request = f"{error.method} {error.path}"
    if isinstance(error, ServiceUnavailable):
        return VerifierError(
            VerifierErrorCode.CRM_API_UNAVAILABLE,
            f"The CRM API at {base_url} did not answer {request} ({error.message}); is it running?",
            status_code=502,
        )
    if error.status == 404:
        return VerifierError(
            VerifierErrorCode.EPISODE_NOT_FOUND,
            f"The CRM API has no live episode {episode_id!r} (closed, expired or never created).",
            field="episode_id",
            status_code=404,
        )
    if error.status in (401, 403):
        return VerifierError(
            VerifierErrorCode.CRM_API_ERROR,
            f"The CRM API refused the verifier's admin key ({error.status}); set "
            "CRMBENCH_ADMIN_KEY to the CRM API's admin key.",
            status_code=502,
        )
    return VerifierError(
        VerifierErrorCode.CRM_API_ERROR,
        f"The CRM API answered {request} with {error.status}: {error.code}: {error.message[:300]}",
        status_code=502,
    )


def _services(request: Request) -> VerifierServices:
    services: VerifierServices = request.app.state.services
    return services


ServicesDep = Annotated[VerifierServices, Depends(_services)]

KEY_NAME = "the verifier key (CRMBENCH_VERIFIER_KEY, else the CRM API's admin key)"
bearer_scheme = HTTPBearer(auto_error=False, description=KEY_NAME)


def require_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """Lets a scoring request through only with the verifier key: no key is UNAUTHORIZED
    (401), any other key, an episode token included, FORBIDDEN (403). Scores and the
    expected values behind them are never served to an agent."""
    expected = services.settings.api_key
    if expected is None:  # create_app refuses to start without one
        raise VerifierError(
            VerifierErrorCode.NOT_CONFIGURED, "The verifier has no key.", status_code=503
        )
    presented = credentials.credentials if credentials is not None else None
    refusal = check_bearer(presented, expected, KEY_NAME)
    if refusal is not None:
        raise VerifierError(
            VerifierErrorCode(refusal.code), refusal.message, status_code=refusal.status_code
        )


KeyDep = Annotated[None, Depends(require_key)]


def check_settings(settings: VerifierSettings) -> None:
    """Raises ValueError (one line) when the scoring routes would have no key or a weak one."""
    if settings.api_key is None:
        raise ValueError(
            "the verifier needs a key for POST /verify and /verify/state: set "
            "CRMBENCH_VERIFIER_KEY, or CRMBENCH_ADMIN_KEY (the CRM API's admin key, used "
            "for both)"
        )
    require_strong_key(settings.api_key, settings.api_key_variable)


def create_app(
    settings: VerifierSettings | None = None,
    *,
    cases: Mapping[str, Case] | None = None,
    judges: Sequence[Judge] = (),
    arbiter: Judge | None = None,
) -> FastAPI:
    """The verifier app. `cases` replaces the corpus (tests); `judges` and `arbiter` add
    LLM judges (none by default: judge facts are then skipped, not guessed), or
    `settings.judges_config` names a judges file, whose judges are built here so that a
    bad file or a missing API key fails at startup (JudgeConfigError). Raises ValueError
    when the verifier has no key, or a weak one (see `check_settings`)."""
    settings = settings or VerifierSettings()
    check_settings(settings)
    if settings.judges_config is not None:
        if judges or arbiter is not None:
            raise ValueError("give judges either in settings.judges_config or as arguments")
        panel = load_judges(settings.judges_config, load_prices(settings.prices_path))
        judges, arbiter = panel.judges, panel.arbiter
        settings = panel.thresholds.apply_to(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = CaseCatalog(settings.cases_dir, cases)
        await catalog.load()
        async with CrmApiClient(
            settings.crm_api_url,
            settings.admin_key,
            timeout=settings.http_timeout_seconds,
            max_connections=100,
        ) as crm:
            app.state.services = VerifierServices(settings, catalog, crm, judges, arbiter)
            yield

    app = FastAPI(
        title="crm-bench verifier",
        version=__version__,
        description=(
            "Scores an episode of the CRM API against its golden case: state assertions, "
            "collateral changes, the facts the final reply must give, and optional LLM "
            "judges. Returns a reward record with a score in [0, 1], pass/fail verdicts "
            "and a rationale per check."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app, from_problem)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=Health, tags=["service"], operation_id="health")
    async def health(services: ServicesDep) -> Health:
        """Liveness, and how many cases are loaded (null while no corpus is present)."""
        return Health(
            status="ok",
            version=__version__,
            cases=services.catalog.count,
            crm_api_url=services.settings.crm_api_url,
        )

    @app.post(
        "/verify",
        response_model=RewardRecord,
        tags=["verify"],
        operation_id="verify_episode",
        responses=ERROR_RESPONSES,
    )
    async def verify(body: VerifyRequest, services: ServicesDep, _: KeyDep) -> RewardRecord:
        """Score a live episode: reads its final state and change log from the CRM API."""
        case = await services.catalog.get(body.case_id)
        raw_state, raw_changes = await services.read_episode(body.episode_id, tables_of(case))
        try:
            state, changes = parse_state(raw_state), parse_changes(raw_changes)
        except InvalidEpisodeData as exc:
            raise VerifierError(
                VerifierErrorCode.CRM_API_ERROR,
                f"The CRM API returned an episode in an unexpected shape: {exc}",
                status_code=502,
            ) from exc
        return await services.score(
            case, state, changes, body.final_reply, body.transcript, body.episode_id
        )

    @app.post(
        "/verify/state",
        response_model=RewardRecord,
        tags=["verify"],
        operation_id="verify_state",
        responses=ERROR_RESPONSES,
    )
    async def verify_state(
        body: VerifyStateRequest, services: ServicesDep, _: KeyDep
    ) -> RewardRecord:
        """Score a state and change log given inline (a saved episode); no CRM API call."""
        case = await services.catalog.get(body.case_id)
        return await services.score(
            case, body.state, body.changes, body.final_reply, body.transcript, body.episode_id
        )
