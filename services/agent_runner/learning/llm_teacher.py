"""The real-model teacher of the learning loop: each `Teacher` call is one model turn on the
provider interface (Anthropic by default, OpenAI alike), prompted from
`config/prompts/teacher_<call>.md` and answered as JSON parsed into the call's model.

A call sends one user message (the rendered template: the episode's view as JSON and the
JSON schema of the expected answer) with the short system prompt `teacher_system.md` and
no tools. The answer is the first JSON object in the model's text (code fences and prose
around it are tolerated). An answer that does not parse or validate, and a provider
outage or a model-side refusal, become a `TeacherReply` with `answer=None` and the
`error`: the loop carries on without the teacher. A setup fault (key refused, model
unknown) is raised: every later call would fail alike, so the run must stop.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent_runner.run.config import ConfigError, RunConfig
from crmbench_contracts.paths import CONFIG_DIR
from crmbench_contracts.rewards import CheckResult, RewardRecord
from crmbench_contracts.teaching import (
    TEACHER_CALLS,
    Advice,
    OutcomeReview,
    SynthesisAnswer,
    TeacherCall,
    TeacherReply,
    TeacherView,
    TriageAnswer,
)
from crmbench_llm import Completion, LLMError, LLMProvider, Message, PriceTable, make_provider

A = TypeVar("A", bound=BaseModel)

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS_DIR = CONFIG_DIR / "prompts"
SYSTEM_PROMPT_FILE = "teacher_system.md"

PROMPT_FILES: dict[TeacherCall, str] = {
    "triage": "teacher_triage.md",
    "plan_review": "teacher_plan_review.md",
    "step_guidance": "teacher_step_guidance.md",
    "outcome_review": "teacher_outcome_review.md",
    "synthesis": "teacher_synthesis.md",
}
"""The template of each call, in the prompts folder."""

ANSWER_MODELS: dict[TeacherCall, type[BaseModel]] = {
    "triage": TriageAnswer,
    "plan_review": Advice,
    "step_guidance": Advice,
    "outcome_review": OutcomeReview,
    "synthesis": SynthesisAnswer,
}

PLACEHOLDERS: dict[TeacherCall, frozenset[str]] = {
    call: frozenset({"view", "answer_schema"}) for call in TEACHER_CALLS
}
PLACEHOLDERS["synthesis"] = frozenset({"view", "answer_schema", "reward"})
"""The placeholders each template may use: `$view` (the episode as JSON, without the
reward), `$answer_schema` (the JSON schema of the answer) and, for synthesis only,
`$reward` (score, passed, claimed outcome, failed checks without their expected values)."""

MAX_ERROR_DETAILS = 3
"""Validation problems named in a reply's `error` (the rest are counted)."""


def _prune(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without the keys whose value is None or empty ("", [], {})."""
    return {key: value for key, value in data.items() if value not in (None, "", [], {})}


def view_json(view: TeacherView) -> str:
    """The view as indented JSON for a prompt: the reward left out (synthesis gets its own
    summary, `reward_json`), and fields that are None or empty dropped from the view and
    from each step and planned call (tool arguments are shown exactly as sent)."""
    data = _prune(view.model_dump(mode="json", exclude={"reward"}))
    for key in ("steps", "planned"):
        if key in data:
            data[key] = [_prune(item) for item in data[key]]
    return json.dumps(data, indent=2, ensure_ascii=False)


def reward_json(reward: RewardRecord | None) -> str:
    """What synthesis is told of the verifier's record: score, passed, claimed outcome and
    the failed checks (id, kind, rationale, state checks' with the case's values redacted:
    `redacted_rationale`). Never the checks' `expected` or `actual` values, the judges or
    the branches: the lesson is to come from the rationale, not from the case's answer.
    "null" when there is no record."""
    if reward is None:
        return "null"
    summary = {
        "score": reward.score,
        "passed": reward.passed,
        "claimed_outcome": None if reward.claimed_outcome is None else str(reward.claimed_outcome),
        "failed_checks": [
            {"check_id": check.check_id, "kind": check.kind, "rationale": redacted_rationale(check)}
            for check in reward.checks
            if not check.passed
        ],
    }
    return json.dumps(summary, indent=2, ensure_ascii=False)


STATE_CHECK_KINDS = frozenset({"row_exists", "row_absent", "field_equals", "count"})
REDACTED = "<case value>"


def redacted_rationale(check: CheckResult) -> str:
    """The check's rationale without the case's values: a state check's rationale quotes
    its expected row keys and field value ("opportunity.amount is 180000, expected
    203000"), which are one case's answer; each is replaced by `<case value>` wherever it
    stands alone (as JSON or as text). Other checks' rationales are kept whole: their
    expected values are the lesson itself (the accepted outcomes, the fact to convey)."""
    if check.kind not in STATE_CHECK_KINDS or not isinstance(check.expected, dict):
        return check.rationale
    where = check.expected.get("where")
    values = [*(where.values() if isinstance(where, dict) else ()), check.expected.get("value")]
    forms = {
        form
        for value in values
        if value is not None and not isinstance(value, bool | dict | list)
        for form in (json.dumps(value, ensure_ascii=False), str(value))
        if form
    }
    text = check.rationale
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(form)}(?![\w.])", REDACTED, text)
    return text


def answer_schema(model: type[BaseModel]) -> str:
    """The JSON schema of an answer model, as shown to the teacher."""
    return json.dumps(model.model_json_schema(), indent=2)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`: the text may wrap it in a ```json fence or in
    prose. None when no `{` starts a parsable object."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _validation_problems(exc: ValidationError) -> str:
    errors = exc.errors()
    shown = []
    for error in errors[:MAX_ERROR_DETAILS]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "answer"
        shown.append(f"{where}: {error.get('msg')}")
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def parse_answer(call: TeacherCall, text: str) -> tuple[BaseModel | None, str | None]:
    """(answer, None) when `text` holds a valid answer to `call`, else (None, why not)."""
    model = ANSWER_MODELS[call]
    data = first_json_object(text)
    if data is None:
        return None, f"the {call} answer holds no JSON object"
    try:
        answer = model.model_validate(data)
    except ValidationError as exc:
        return None, f"the {call} answer is not a valid {model.__name__}: " + (
            _validation_problems(exc)
        )
    if isinstance(answer, OutcomeReview) and answer.retry and not answer.guidance:
        return None, "the outcome_review answer orders a retry without guidance"
    return answer, None


class TeacherPrompts:
    """The system prompt and the five call templates, read from a folder and checked:
    each template may use only its call's `PLACEHOLDERS`, so a render never leaves one."""

    def __init__(self, system: str, templates: Mapping[TeacherCall, Template]) -> None:
        self.system = system
        self.templates = dict(templates)

    @classmethod
    def from_dir(cls, folder: Path) -> TeacherPrompts:
        """Raises ConfigError naming the file that is missing, unreadable or has an
        unknown or malformed placeholder."""
        system = _read(folder / SYSTEM_PROMPT_FILE).strip()
        if Template(system).get_identifiers():
            raise ConfigError(f"{folder / SYSTEM_PROMPT_FILE}: the system prompt takes no $ fields")
        templates: dict[TeacherCall, Template] = {}
        for call, name in PROMPT_FILES.items():
            path = folder / name
            template = Template(_read(path))
            if not template.is_valid():
                raise ConfigError(f"{path}: a '$' that is no placeholder (write '$$' for one)")
            unknown = set(template.get_identifiers()) - PLACEHOLDERS[call]
            if unknown:
                raise ConfigError(
                    f"{path}: unknown placeholder(s) {sorted(unknown)}; "
                    f"the {call} prompt takes {sorted(PLACEHOLDERS[call])}"
                )
            templates[call] = template
        return cls(system, templates)

    def render(self, call: TeacherCall, view: TeacherView) -> str:
        """The user message of `call` for `view`."""
        return self.templates[call].substitute(placeholder_values(call, view)).strip()


def placeholder_values(call: TeacherCall, view: TeacherView) -> dict[str, str]:
    """The value of each of `call`'s `PLACEHOLDERS` for `view`."""
    values = {"view": view_json(view), "answer_schema": answer_schema(ANSWER_MODELS[call])}
    if call == "synthesis":
        values["reward"] = reward_json(view.reward)
    return values


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the teacher prompt {path}: {exc.strerror}") from exc


class LLMTeacher:
    """A `Teacher` (agent_runner.learning.teacher) that asks a model.

    `provider` is any `LLMProvider` (its retries, timeouts and prices are its config's);
    `model` is the configured model name, for the record. The teacher owns the provider:
    `aclose` closes it.
    """

    def __init__(
        self,
        provider: LLMProvider,
        model: str,
        prompts_dir: Path = DEFAULT_PROMPTS_DIR,
        *,
        name: str = "teacher",
        prompts: TeacherPrompts | None = None,
    ) -> None:
        self.name = name
        self.model: str | None = model
        self.provider = provider
        self.prompts = prompts or TeacherPrompts.from_dir(prompts_dir)
        """Read from `prompts_dir` unless given already read."""
        self._calls: dict[tuple[str, TeacherCall], int] = {}

    def _call_id(self, view: TeacherView, call: TeacherCall) -> str:
        """`{session_id}#teacher-{call}-{n}`, n counting this call in this session from 1."""
        key = (view.session_id, call)
        self._calls[key] = self._calls.get(key, 0) + 1
        return f"{view.session_id}#teacher-{call}-{self._calls[key]}"

    async def _ask(self, call: TeacherCall, view: TeacherView, model: type[A]) -> TeacherReply[A]:
        call_id = self._call_id(view, call)
        # Parametrised, so the reply validates and dumps its answer as `model`.
        reply = TeacherReply[model]  # type: ignore[valid-type]
        prompt = self.prompts.render(call, view)
        started = time.perf_counter()
        try:
            completion: Completion = await self.provider.complete(
                [Message.user(prompt)], system=self.prompts.system
            )
        except LLMError as error:
            if error.fault == "setup":
                raise
            _log_error(call_id, call, f"{error.fault}: {error.code}")
            return reply(
                call_id=call_id,
                call=call,
                error=f"the teacher's {call} call failed ({error.fault}): {error}",
                cost_usd=0.0,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        text = completion.message.content
        answer, error_text = parse_answer(call, text)
        if error_text is not None and completion.stop_reason == "max_tokens":
            error_text += " (the answer was cut off at the provider's max_tokens)"
        if error_text is not None:
            _log_error(call_id, call, error_text)
        usage = completion.usage
        return reply(
            call_id=call_id,
            call=call,
            answer=answer,
            error=error_text,
            raw_text=text,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cost_usd=completion.cost_usd,
            latency_ms=completion.latency_ms,
        )

    async def triage(self, view: TeacherView) -> TeacherReply[TriageAnswer]:
        """The lane for the episode (before it starts), with reason and confidence."""
        return await self._ask("triage", view, TriageAnswer)

    async def review_plan(self, view: TeacherView) -> TeacherReply[Advice]:
        """Coach lane, before the first write: `view.planned` holds the calls asked for."""
        return await self._ask("plan_review", view, Advice)

    async def guide_step(self, view: TeacherView) -> TeacherReply[Advice]:
        """Coach lane, after a refused call (the last step of `view.steps`)."""
        return await self._ask("step_guidance", view, Advice)

    async def review_outcome(self, view: TeacherView) -> TeacherReply[OutcomeReview]:
        """Paired lane, after the final reply: retry (with guidance) or not."""
        return await self._ask("outcome_review", view, OutcomeReview)

    async def synthesize(self, view: TeacherView) -> TeacherReply[SynthesisAnswer]:
        """After the reward (`view.reward`): candidate playbook entries, before the gates.
        One invalid candidate makes the whole answer invalid (error, no candidates)."""
        return await self._ask("synthesis", view, SynthesisAnswer)

    async def aclose(self) -> None:
        await self.provider.aclose()


def _log_error(call_id: str, call: TeacherCall, error: str) -> None:
    logger.warning("teacher_error: %s %s", call_id, error, extra={"call_id": call_id, "call": call})


def build_teacher(config: RunConfig, prompts_dir: Path | None = None) -> LLMTeacher:
    """The run's teacher from `config.providers["teacher"]`, priced from `config.prices`,
    its prompts from `prompts_dir` (default config/prompts). The run's `model` override
    is the agent's, so it does not apply here.

    Reads the provider's API key from the environment now (MissingApiKey names the
    variable); raises ConfigError when `providers.teacher` is missing or a prompt is.
    """
    provider_config = config.providers.get("teacher")
    if provider_config is None:
        raise ConfigError(
            "providers.teacher is required for the learning loop's teacher "
            "(provider, model; see config/run.yaml)"
        )
    folder = prompts_dir or DEFAULT_PROMPTS_DIR
    prompts = TeacherPrompts.from_dir(folder)  # a bad prompt fails before a client opens
    prices = PriceTable.from_yaml(config.resolve_path(config.prices))
    provider = make_provider(provider_config, prices)
    return LLMTeacher(provider, provider_config.model, folder, prompts=prompts)
