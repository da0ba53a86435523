"""The simulated teacher: a seeded, offline stand-in for the teacher model, used in tests
and in the customer's simulated experiment (design/learning.md, steps 2 and 4).

It implements `agent_runner.learning.teacher.Teacher` from the `TeacherView` alone. It is
never given the case (its constructor takes only its config), so it cannot read the
expected state, the reference actions or the reference reply: it teaches from what a real
teacher would see, the user's turns, the steps and their refusals, the reply and, for
synthesis, the verifier's reward record (check ids, kinds, rationales; never the checks'
`expected` or `actual` values).

Diagnosis (`diagnose`): the lesson that applies is the failure category of the first
refused step's error code (the CRM API's codes are the taxonomy's categories, plus the
configured `code_aliases`), else a category named by the rationale of a failed check of
the reward (reason facts carry their rule), else, when the reward failed, the
success-path lesson (a write was left out).

Lessons come from the config's phrasebook (config/simulated_teacher.yaml): per category
and per level, the situation in words, cue patterns, the action, tools, argument rules
and expected effect. A lesson's cue text generalises the user's request (names, quoted
values, numbers, dates, emails and ids become placeholders such as `<client>`,
`<amount>`) and adds the situation and the task category, so later tasks of the same kind
embed close to it.

Imperfection (synthesis only, one draw per episode): at `restate_rate` a level-"task"
lesson restating the case's values (the learning loop's gates must refuse it), at
`wrong_rate` the lesson of another category, at `useless_rate` generic advice that
addresses no mistake. Live guidance (plan review, step guidance, outcome review) gives
the diagnosed lesson's action text; plan review sees a hazard at `plan_review.catch_rate`.

Every random choice is `teacher_draw(seed, session_id, purpose)`, so the same view always
gets the same reply. Replies cost nothing, take no time and count no tokens unless
`chars_per_token` is set.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crmbench_contracts.cases import FAILURE_CATEGORIES, Outcome
from crmbench_contracts.paths import CONFIG_DIR
from crmbench_contracts.playbooks import Action, ArgumentRule, Cue, Level, PlaybookContent
from crmbench_contracts.replies import classify_outcome
from crmbench_contracts.teaching import (
    Advice,
    OutcomeReview,
    PlannedCall,
    StepView,
    SynthesisAnswer,
    TeacherCall,
    TeacherReply,
    TeacherView,
    TriageAnswer,
)

SUCCESS_PATH = "success"
"""The diagnosis of an episode that failed without a refusal or a named rule."""

LessonKind = Literal["correct", "wrong", "useless", "restate"]
DiagnosisSource = Literal["refusal", "reward_rule", "reward_state"]
LESSON_LEVELS: tuple[Level, ...] = ("domain", "workflow", "universal")
"""The levels a phrasebook lesson may have ("task" is the restating level, built from the
episode's own values, never from the phrasebook)."""


class SimulatedTeacherConfigError(ValueError):
    """The simulated teacher's YAML is unreadable or invalid; the message names the file
    and the field."""

    code = "simulated_teacher_config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class LessonPhrase(_Strict):
    """One lesson of the phrasebook, in the teacher's own words."""

    cue: str = Field(min_length=1)
    """The situation in words; the cue text adds the generalised request to it."""
    patterns: list[str] = Field(default_factory=list)
    """Cue patterns (`re.search`, case-insensitive, on retrieval's task text)."""
    action: str = Field(min_length=1)
    tools: list[str] = Field(default_factory=list)
    argument_rules: list[ArgumentRule] = Field(default_factory=list)
    expected_effect: str = Field(min_length=1)

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        return Cue(text="-", patterns=patterns).patterns

    @field_validator("argument_rules", mode="before")
    @classmethod
    def _rules(cls, rules: Any) -> Any:
        # ArgumentRule is the contract's (lax) model: YAML mappings become rules here.
        if isinstance(rules, list):
            return [ArgumentRule.model_validate(rule) for rule in rules]
        return rules


Phrasebook = dict[Level, LessonPhrase]


def _check_levels(book: Phrasebook) -> Phrasebook:
    if not book:
        raise ValueError("a lesson needs at least one level (domain, workflow or universal)")
    if "task" in book:
        raise ValueError("level 'task' is the restating level and has no phrasebook lesson")
    return book


class UselessLesson(_Strict):
    """Generic advice that addresses no mistake (a test checks it against the student)."""

    action: str = Field(min_length=1)
    expected_effect: str = Field(min_length=1)


class TriageSettings(_Strict):
    confidence_low: float = Field(ge=0, le=1)
    confidence_high: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> TriageSettings:
        if self.confidence_low > self.confidence_high:
            raise ValueError("confidence_low is above confidence_high")
        return self


class PlanReviewSettings(_Strict):
    """What plan review can see in a planned call's arguments, and how often it does."""

    catch_rate: float = Field(ge=0, le=1)
    """Probability that it reports a hazard the planned calls show."""
    amount_arguments: list[str] = Field(default_factory=list)
    amount_max: float = Field(gt=0)
    """The largest amount the CRM accepts (domain.md)."""
    probability_arguments: list[str] = Field(default_factory=list)
    date_arguments: list[str] = Field(default_factory=list)
    """Arguments that must be YYYY-MM-DD dates."""
    future_date_arguments: list[str] = Field(default_factory=list)
    """Date arguments that may not be before the episode's `today`."""
    email_arguments: list[str] = Field(default_factory=list)
    file_name_arguments: list[str] = Field(default_factory=list)


class GeneraliseSettings(_Strict):
    """How a user's request becomes the generalised request of a cue."""

    argument_placeholders: dict[str, str] = Field(default_factory=dict)
    """Argument name -> placeholder; `{entity}` is the tool's record type."""
    common_words: list[str] = Field(default_factory=list)
    """Capitalised words kept when they open a run of capitalised words (request verbs,
    determiners); any other capitalised run is taken for a name."""

    @field_validator("argument_placeholders")
    @classmethod
    def _templates(cls, placeholders: dict[str, str]) -> dict[str, str]:
        for argument, template in placeholders.items():
            try:
                template.format(entity="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"placeholder of {argument!r} may only use {{entity}}: {exc}"
                ) from None
        return placeholders


class SimulatedTeacherConfig(_Strict):
    """Everything the simulated teacher says and how often it errs (YAML:
    config/simulated_teacher.yaml)."""

    seed: int
    name: str = Field(default="simulated", min_length=1)
    model: str = Field(default="crmbench-simulated-teacher", min_length=1)
    chars_per_token: float | None = Field(default=None, gt=0)
    """None: replies count zero tokens; else characters / chars_per_token, rounded up."""
    level: Level = "domain"
    """The level of the lessons it writes, when the lesson has one at that level (else
    the first of domain, workflow, universal it has)."""
    restate_rate: float = Field(default=0.0, ge=0, le=1)
    wrong_rate: float = Field(default=0.0, ge=0, le=1)
    useless_rate: float = Field(default=0.0, ge=0, le=1)
    teacher_candidate_rate: float = Field(default=0.0, ge=0, le=1)
    """Probability that synthesis adds a teacher-audience candidate."""
    triage: TriageSettings
    plan_review: PlanReviewSettings
    code_aliases: dict[str, str] = Field(default_factory=dict)
    """Refusal codes outside the taxonomy -> the category whose lesson applies."""
    generalise: GeneraliseSettings
    useless: list[UselessLesson] = Field(min_length=1)
    teacher_action_template: str = Field(min_length=1)
    """The action of a teacher-audience candidate; `{action}` is the student's action."""
    success: Phrasebook
    categories: dict[str, Phrasebook]

    @field_validator("level")
    @classmethod
    def _lesson_level(cls, level: Level) -> Level:
        if level == "task":
            raise ValueError("level 'task' is the restating level; use restate_rate for it")
        return level

    @field_validator("success")
    @classmethod
    def _success_levels(cls, book: Phrasebook) -> Phrasebook:
        return _check_levels(book)

    @field_validator("categories")
    @classmethod
    def _every_category(cls, categories: dict[str, Phrasebook]) -> dict[str, Phrasebook]:
        unknown = sorted(set(categories) - set(FAILURE_CATEGORIES))
        missing = sorted(set(FAILURE_CATEGORIES) - set(categories))
        if unknown or missing:
            raise ValueError(f"unknown categories {unknown}, missing categories {missing}")
        for category, book in categories.items():
            try:
                _check_levels(book)
            except ValueError as exc:
                raise ValueError(f"{category}: {exc}") from None
        return categories

    @field_validator("code_aliases")
    @classmethod
    def _aliases(cls, aliases: dict[str, str]) -> dict[str, str]:
        unknown = sorted(target for target in aliases.values() if target not in FAILURE_CATEGORIES)
        if unknown:
            raise ValueError(f"aliases to unknown categories {unknown}")
        return aliases

    @field_validator("teacher_action_template")
    @classmethod
    def _template(cls, template: str) -> str:
        try:
            template.format(action="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"may only use the {{action}} placeholder: {exc}") from None
        return template

    @model_validator(mode="after")
    def _exclusive_rates(self) -> SimulatedTeacherConfig:
        total = self.restate_rate + self.wrong_rate + self.useless_rate
        if total > 1.0:
            raise ValueError(
                f"restate_rate + wrong_rate + useless_rate is {total:g}; they are exclusive "
                "outcomes of one draw and may add up to 1 at most"
            )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulatedTeacherConfig:
        """Loads and validates a YAML file. Raises SimulatedTeacherConfigError naming the
        file and the first invalid field (`categories.PAST_DATE.domain.action: ...`)."""
        source = Path(path)
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SimulatedTeacherConfigError(f"{source}: cannot read it: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "(top level)"
            more = exc.error_count() - 1
            suffix = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
            raise SimulatedTeacherConfigError(
                f"{source}: {where}: {first.get('msg')}{suffix}"
            ) from exc

    def lessons(self) -> dict[str, Phrasebook]:
        """Every lesson the teacher knows: the success path and each category."""
        return {SUCCESS_PATH: self.success, **self.categories}

    def lesson_level(self, lesson: str) -> Level:
        """The level it writes `lesson` (a category or SUCCESS_PATH) at. KeyError for an
        unknown lesson."""
        book = self.lessons()[lesson]
        if self.level in book:
            return self.level
        return next(level for level in LESSON_LEVELS if level in book)

    def phrase(self, lesson: str) -> LessonPhrase:
        """The phrasebook lesson it writes for `lesson`, at `lesson_level(lesson)`."""
        return self.lessons()[lesson][self.lesson_level(lesson)]

    def category_of_code(self, code: str | None) -> str | None:
        """The category whose lesson a refusal code calls for, None when none does."""
        if code is None:
            return None
        if code in self.categories:
            return code
        return self.code_aliases.get(code)


def default_config_path() -> Path:
    """The committed default (config/simulated_teacher.yaml at the repository root)."""
    return CONFIG_DIR / "simulated_teacher.yaml"


def teacher_draw(seed: int, session_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by its inputs: SHA-256 of the joined inputs, as the
    simulated student's `uniform_draw` (stable across processes)."""
    key = "\x1f".join((str(seed), session_id, purpose)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


# ---------------------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class Diagnosis:
    """Which lesson an episode calls for, and what showed it."""

    lesson: str
    """A failure category, or SUCCESS_PATH."""
    source: DiagnosisSource
    evidence: str


_CATEGORY_NAME = re.compile(
    r"\b(" + "|".join(sorted(FAILURE_CATEGORIES, key=len, reverse=True)) + r")\b"
)


def _refusal_lesson(config: SimulatedTeacherConfig, steps: Iterable[StepView]) -> Diagnosis | None:
    for step in steps:
        if step.ok:
            continue
        category = config.category_of_code(step.error_code)
        if category is not None:
            return Diagnosis(
                category,
                "refusal",
                f"step {step.step} ({step.tool}) refused with {step.error_code}",
            )
    return None


def diagnose(config: SimulatedTeacherConfig, view: TeacherView) -> Diagnosis | None:
    """The lesson the episode of `view` calls for (module docstring): from the first
    refused step whose code names a lesson, else from a failed check of `view.reward`
    whose rationale names a rule, else SUCCESS_PATH when the reward failed. None when
    nothing went wrong (no such refusal, and no reward or a passed one). Reads the checks'
    ids, kinds and rationales only."""
    refused = _refusal_lesson(config, view.steps)
    if refused is not None:
        return refused
    reward = view.reward
    if reward is None or reward.passed:
        return None
    for check in reward.checks:
        if check.passed:
            continue
        named = _CATEGORY_NAME.search(check.rationale)
        if named is not None:
            return Diagnosis(
                named.group(1),
                "reward_rule",
                f"{check.check_id} ({check.kind}) names {named.group(1)}",
            )
    failed = [check.check_id for check in reward.checks if not check.passed]
    return Diagnosis(
        SUCCESS_PATH,
        "reward_state",
        f"reward failed ({', '.join(failed) or 'score'}) with no refusal",
    )


# ---------------------------------------------------------------------------- plan hazards

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s.][^@\s]*\.[^@\s.]{2,}")
"""name@domain.tld, the shape the CRM documents for email arguments."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _argument_hazard(name: str, value: Any, today: date, rules: PlanReviewSettings) -> str | None:
    if name in rules.amount_arguments:
        if isinstance(value, str):
            return "TYPE_MISMATCH"
        if _is_number(value):
            if value < 0:
                return "NEGATIVE_AMOUNT"
            if value == 0:
                return "ZERO_AMOUNT"
            if value > rules.amount_max:
                return "AMOUNT_EXCEEDS_MAX"
    if name in rules.probability_arguments and _is_number(value):
        if not 0 <= value <= 100:
            return "PROBABILITY_OUT_OF_RANGE"
        if isinstance(value, float) and not value.is_integer():
            return "PROBABILITY_DECIMAL"
    if not isinstance(value, str):
        return None
    if value and not value.strip():
        return "BLANK_STRING"
    if value != value.strip():
        return "ENUM_WHITESPACE"
    if name in rules.date_arguments:
        try:
            when = date.fromisoformat(value) if _ISO_DATE.fullmatch(value) else None
        except ValueError:
            when = None
        if when is None:
            return "INVALID_DATE_FORMAT"
        if name in rules.future_date_arguments and when < today:
            return "PAST_DATE"
    if name in rules.email_arguments and not _EMAIL_SHAPE.fullmatch(value):
        return "MALFORMED_EMAIL"
    if name in rules.file_name_arguments:
        if "/" in value or "\\" in value:
            return "UNSAFE_FILENAME"
        stem, dot, extension = value.rpartition(".")
        if not dot or not stem.strip() or not extension:
            return "MISSING_FILE_EXTENSION"
    return None


def plan_hazard(
    planned: Iterable[PlannedCall], today: str, rules: PlanReviewSettings
) -> tuple[str, str] | None:
    """The first hazard the planned calls' arguments show syntactically, as (failure
    category, "tool.argument"); None when it sees none. `today` is ISO (YYYY-MM-DD)."""
    day = date.fromisoformat(today)
    for call in planned:
        for name, value in call.arguments.items():
            category = _argument_hazard(name, value, day, rules)
            if category is not None:
                return category, f"{call.tool}.{name}"
    return None


# ---------------------------------------------------------------------------- generalising

_ENTITIES = ("opportunity", "client", "contact", "company", "contract", "quote", "document", "note")
_PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")
_EMAIL_LIKE = re.compile(r"[\w.+-]*@[\w.@-]*")
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
_CODE_ID = re.compile(r"\b[A-Za-z]{1,6}[-_]\d[\w-]*\b")
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b"
    rf"|\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b"
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}(?:,?\s+\d{{4}})?",
    re.IGNORECASE,
)
_QUOTED = re.compile(
    r"(?<!\w)'[^'\n]*'(?!\w)|\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d|\u2018[^\u2019\n]*\u2019"
)
_MONEY = re.compile(
    r"[-\u2212]?[$\u20ac\u00a3]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:k|m|mm|million)\b)?"
    r"(?:\s?(?:usd|eur|gbp)\b)?"
    r"|(?<![\w<])\d[\d,]*(?:\.\d+)?\s?(?:usd|eur|gbp|dollars?|euros?)\b",
    re.IGNORECASE,
)
_PERCENT = re.compile(r"(?<![\w<])[-\u2212]?\d[\d,]*(?:\.\d+)?\s?%")
_NUMBER = re.compile(r"(?<![\w<])[-\u2212]?\d[\d,]*(?:\.\d+)?(?:k|m|mm)?(?!\w)", re.IGNORECASE)
_CAPITAL_RUN = re.compile(r"\b[A-Z][\w'\u2019&-]*(?:[ \t]+[A-Z0-9][\w'\u2019&-]*)*")


def _entity(tool: str) -> str:
    return next((entity for entity in _ENTITIES if entity in tool), "record")


def _known_values(
    calls: Iterable[tuple[str, Mapping[str, Any]]], settings: GeneraliseSettings
) -> tuple[dict[str, str], dict[float, str]]:
    """Argument values of the calls (search criteria too) that have a placeholder: the
    strings -> placeholder, and the numbers -> placeholder."""
    texts: dict[str, str] = {}
    numbers: dict[float, str] = {}
    placeholders = settings.argument_placeholders
    for tool, arguments in calls:
        entity = _entity(tool)
        items: list[tuple[str, Any]] = list(arguments.items())
        criteria = arguments.get("criteria")
        if isinstance(criteria, Mapping):
            items += list(criteria.items())
        for name, value in items:
            template = placeholders.get(name)
            if template is None:
                continue
            if _is_number(value):
                numbers.setdefault(float(value), template.format(entity=entity))
            elif isinstance(value, str) and len(value.strip()) >= 2:
                texts.setdefault(value.strip(), template.format(entity=entity))
    return texts, numbers


def _replace_values(text: str, values: Mapping[str, str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        head = r"(?<!\w)" if value[:1].isalnum() else ""
        tail = r"(?!\w)" if value[-1:].isalnum() else ""
        text = re.sub(head + re.escape(value) + tail, values[value], text, flags=re.IGNORECASE)
    return text


def _unquote(match: re.Match[str]) -> str:
    inner = match.group(0)[1:-1].strip()
    return inner if _PLACEHOLDER.fullmatch(inner) else "<value>"


def _names(text: str, common: frozenset[str]) -> str:
    out: list[str] = []
    position = 0
    for match in _CAPITAL_RUN.finditer(text):
        words = match.group(0).split()
        kept: list[str] = []
        while words and words[0].lower().strip("'\u2019") in common:
            kept.append(words.pop(0))
        out.append(text[position : match.start()])
        out.append(" ".join([*kept, *(["<name>"] if words else [])]))
        position = match.end()
    out.append(text[position:])
    return "".join(out)


def generalise_request(
    turns: Iterable[str],
    calls: Iterable[tuple[str, Mapping[str, Any]]],
    settings: GeneraliseSettings,
) -> str:
    """The user's turns with every case-specific value replaced by a placeholder: first
    the string arguments of `calls` ((tool, arguments) pairs) the turns repeat, by
    `settings.argument_placeholders` (numbers equal to a numeric argument get that
    argument's placeholder), then emails, ids, dates, quoted values, money,
    percentages, numbers, and runs of capitalised words (names) not made of
    `settings.common_words`. Turns are joined with " / "."""
    common = frozenset(word.lower() for word in settings.common_words)
    values, numbers = _known_values(calls, settings)

    def number(match: re.Match[str]) -> str:
        text = match.group(0).replace(",", "").replace("\u2212", "-").replace(" ", "")
        try:
            return numbers.get(float(text), "<number>")
        except ValueError:
            return "<number>"

    parts: list[str] = []
    for turn in turns:
        text = _replace_values(turn.strip(), values)
        text = _EMAIL_LIKE.sub("<email>", text)
        text = _UUID.sub("<id>", text)
        text = _CODE_ID.sub("<id>", text)
        text = _DATE.sub("<date>", text)
        text = _QUOTED.sub(_unquote, text)
        text = _MONEY.sub("<amount>", text)
        text = _PERCENT.sub("<percent>", text)
        text = _NUMBER.sub(number, text)
        text = _names(text, common)
        parts.append(" ".join(text.split()))
    return " / ".join(part for part in parts if part)


def _calls(view: TeacherView) -> list[tuple[str, Mapping[str, Any]]]:
    return [(step.tool, step.arguments) for step in view.steps] + [
        (call.tool, call.arguments) for call in view.planned
    ]


def _category_words(view: TeacherView) -> str:
    return view.task_category.replace("_", " ").lower()


def lesson_cue_text(config: SimulatedTeacherConfig, lesson: str, view: TeacherView) -> str:
    """A lesson's cue text for the episode of `view`: the generalised request and the task
    category, laid out as retrieval's task text lays out a task (`task_text`: turns, then
    "Task category: <category>"), then the lesson's situation in words."""
    request = generalise_request(view.user_turns, _calls(view), config.generalise)
    situation = " ".join(config.phrase(lesson).cue.split())
    lines = [request] if request else []
    return "\n".join([*lines, f"Task category: {_category_words(view)}", situation])


# ---------------------------------------------------------------------------- lessons


@dataclass(frozen=True)
class LessonChoice:
    """What synthesis writes for one episode: the kind of lesson and its category."""

    diagnosis: Diagnosis
    kind: LessonKind
    lesson: str
    """The category (or SUCCESS_PATH) whose phrasebook lesson it writes; for a useless
    lesson, the diagnosed one (its cue is right, its action is not)."""


def _content(config: SimulatedTeacherConfig, lesson: str, view: TeacherView) -> PlaybookContent:
    phrase = config.phrase(lesson)
    return PlaybookContent(
        audience="student",
        level=config.lesson_level(lesson),
        cue=Cue(text=lesson_cue_text(config, lesson, view), patterns=list(phrase.patterns)),
        action=Action(
            text=" ".join(phrase.action.split()),
            tools=list(phrase.tools),
            argument_rules=list(phrase.argument_rules),
        ),
        expected_effect=phrase.expected_effect,
    )


def _restated(config: SimulatedTeacherConfig, lesson: str, view: TeacherView) -> PlaybookContent:
    """A level-"task" lesson that restates this episode's values (the gates' target)."""
    phrase = config.phrase(lesson)
    request = " / ".join(turn.strip() for turn in view.user_turns if turn.strip())
    calls = "; ".join(
        f"{step.tool} {json.dumps(step.arguments, sort_keys=True)}" for step in view.steps
    )
    made = f" The calls were: {calls}." if calls else ""
    return PlaybookContent(
        audience="student",
        level="task",
        cue=Cue(
            text=f"{request} Task category: {_category_words(view)}",
            patterns=[re.escape(request)] if request else [],
        ),
        action=Action(
            text=f'For "{request}": {" ".join(phrase.action.split())}{made}',
            tools=list(phrase.tools),
            argument_rules=list(phrase.argument_rules),
        ),
        expected_effect=phrase.expected_effect,
    )


def _useless(config: SimulatedTeacherConfig, lesson: str, view: TeacherView) -> PlaybookContent:
    pick = config.useless[
        _index(teacher_draw(config.seed, view.session_id, "synthesis:useless"), len(config.useless))
    ]
    return PlaybookContent(
        audience="student",
        level=config.lesson_level(lesson),
        cue=Cue(text=lesson_cue_text(config, lesson, view)),
        action=Action(text=pick.action),
        expected_effect=pick.expected_effect,
    )


def _index(draw: float, count: int) -> int:
    return min(int(draw * count), count - 1)


def _for_teacher(config: SimulatedTeacherConfig, content: PlaybookContent) -> PlaybookContent:
    return content.model_copy(
        update={
            "audience": "teacher",
            "action": content.action.model_copy(
                update={
                    "text": " ".join(
                        config.teacher_action_template.format(action=content.action.text).split()
                    )
                }
            ),
        }
    )


def choose_lesson(config: SimulatedTeacherConfig, view: TeacherView) -> LessonChoice | None:
    """What synthesis writes for `view`: None when `diagnose` finds nothing to teach;
    else one draw picks restate, wrong, useless (at their rates, exclusive) or correct,
    and a second draw picks the wrong lesson among the others (sorted)."""
    diagnosis = diagnose(config, view)
    if diagnosis is None:
        return None
    draw = teacher_draw(config.seed, view.session_id, "synthesis:kind")
    if draw < config.restate_rate:
        return LessonChoice(diagnosis, "restate", diagnosis.lesson)
    if draw < config.restate_rate + config.wrong_rate:
        others = sorted(lesson for lesson in config.lessons() if lesson != diagnosis.lesson)
        pick = teacher_draw(config.seed, view.session_id, "synthesis:wrong")
        return LessonChoice(diagnosis, "wrong", others[_index(pick, len(others))])
    if draw < config.restate_rate + config.wrong_rate + config.useless_rate:
        return LessonChoice(diagnosis, "useless", diagnosis.lesson)
    return LessonChoice(diagnosis, "correct", diagnosis.lesson)


# ---------------------------------------------------------------------------- the teacher

A = TypeVar("A", bound=BaseModel)


class SimulatedTeacher:
    """The `Teacher` protocol, answered from the view and the config only (module
    docstring). Construct it with its config; it holds no case and no state."""

    def __init__(self, config: SimulatedTeacherConfig) -> None:
        self.config = config
        self.name = config.name
        self.model: str | None = config.model

    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> SimulatedTeacher:
        """A teacher configured by the YAML at `path` (default: `default_config_path()`);
        raises SimulatedTeacherConfigError."""
        return cls(SimulatedTeacherConfig.from_yaml(path or default_config_path()))

    def draw(self, view: TeacherView, purpose: str) -> float:
        return teacher_draw(self.config.seed, view.session_id, purpose)

    def _tokens(self, text: str) -> int:
        per = self.config.chars_per_token
        return 0 if per is None else math.ceil(len(text) / per)

    def _reply(self, call: TeacherCall, view: TeacherView, answer: A) -> TeacherReply[A]:
        """The reply carrying `answer`: its id a digest of (seed, call, view), so the same
        view gets the same id; tokens counted only with `chars_per_token`."""
        raw = answer.model_dump_json()
        prompt = view.model_dump_json()
        key = "\x1f".join((str(self.config.seed), call, prompt)).encode("utf-8")
        # Parametrised by the answer's own class, so the reply validates and dumps it as
        # that model (a bare TypeVar would dump it as an empty BaseModel).
        reply_type: type[TeacherReply[A]] = TeacherReply[type(answer)]  # type: ignore[misc,assignment]
        return reply_type(
            call_id=f"simteacher-{call}-{hashlib.sha256(key).hexdigest()[:16]}",
            call=call,
            answer=answer,
            raw_text=raw,
            input_tokens=self._tokens(prompt),
            output_tokens=self._tokens(raw),
            cost_usd=0.0,
            latency_ms=0.0,
        )

    def _guidance(self, lesson: str) -> str:
        return " ".join(self.config.phrase(lesson).action.split())

    async def triage(self, view: TeacherView) -> TeacherReply[TriageAnswer]:
        """`coach` when no playbook guidance is on hand for the teacher, else `auto`;
        confidence drawn uniformly in [confidence_low, confidence_high]."""
        bounds = self.config.triage
        confidence = bounds.confidence_low + (
            bounds.confidence_high - bounds.confidence_low
        ) * self.draw(view, "triage")
        if view.playbook_guidance.strip():
            answer = TriageAnswer(
                lane="auto", reason="the playbook has guidance for this task", confidence=confidence
            )
        else:
            answer = TriageAnswer(
                lane="coach", reason="no playbook guidance for this task yet", confidence=confidence
            )
        return self._reply("triage", view, answer)

    async def review_plan(self, view: TeacherView) -> TeacherReply[Advice]:
        """Approves (empty guidance) unless a planned call shows a hazard
        (`plan_hazard`) and it notices it (at `plan_review.catch_rate`): then the hazard's
        lesson as guidance."""
        hazard = plan_hazard(view.planned, view.today, self.config.plan_review)
        purpose = f"plan_review:{len(view.steps)}:{len(view.guidance_given)}"
        if hazard is None or self.draw(view, purpose) >= self.config.plan_review.catch_rate:
            return self._reply(
                "plan_review", view, Advice(guidance="", reason="the plan looks fine")
            )
        category, where = hazard
        advice = Advice(guidance=self._guidance(category), reason=f"{where} looks like {category}")
        return self._reply("plan_review", view, advice)

    async def guide_step(self, view: TeacherView) -> TeacherReply[Advice]:
        """After a refused call: the lesson for its error code (nothing when the last step
        succeeded, its code calls for no lesson, or the same guidance was already given)."""
        last = view.steps[-1] if view.steps else None
        category = (
            None if last is None or last.ok else self.config.category_of_code(last.error_code)
        )
        if last is None or category is None:
            return self._reply(
                "step_guidance", view, Advice(reason="no refusal it has a lesson for")
            )
        guidance = self._guidance(category)
        if guidance in view.guidance_given:
            return self._reply("step_guidance", view, Advice(reason="already said"))
        return self._reply(
            "step_guidance",
            view,
            Advice(guidance=guidance, reason=f"step {last.step} refused with {last.error_code}"),
        )

    async def review_outcome(self, view: TeacherView) -> TeacherReply[OutcomeReview]:
        """Orders a retry when a step was refused and the final reply still claims the work
        done (`classify_outcome` reads `completed`), with the lesson for the first refusal's
        code (the success-path lesson when the code has none); else no retry."""
        refused = view.refused_steps
        claimed = classify_outcome(view.final_reply or "").outcome
        if not refused or claimed is not Outcome.COMPLETED:
            reason = "no refused call" if not refused else f"the reply reads as {claimed.value}"
            return self._reply("outcome_review", view, OutcomeReview(retry=False, reason=reason))
        first = refused[0]
        lesson = self.config.category_of_code(first.error_code) or SUCCESS_PATH
        review = OutcomeReview(
            retry=True,
            guidance=self._guidance(lesson),
            reason=f"step {first.step} was refused ({first.error_code}); the reply claims success",
        )
        return self._reply("outcome_review", view, review)

    async def synthesize(self, view: TeacherView) -> TeacherReply[SynthesisAnswer]:
        """Candidate entries after the reward: none when the reward passed and no call was
        refused (a refused call that the student recovered from still teaches), else one
        student-audience lesson (`choose_lesson`: correct, wrong, useless or restating)
        and, at `teacher_candidate_rate`, the same lesson for the teacher's audience.
        Without a reward record it answers nothing, with the error."""
        if view.reward is None:
            return TeacherReply[SynthesisAnswer](
                call_id=f"simteacher-synthesis-{view.session_id}",
                call="synthesis",
                error="synthesis needs the reward record (view.reward is None)",
            )
        choice = choose_lesson(self.config, view)
        if choice is None:
            return self._reply("synthesis", view, SynthesisAnswer())
        if choice.kind == "restate":
            content = _restated(self.config, choice.lesson, view)
        elif choice.kind == "useless":
            content = _useless(self.config, choice.lesson, view)
        else:
            content = _content(self.config, choice.lesson, view)
        candidates = [content]
        if self.draw(view, "synthesis:teacher") < self.config.teacher_candidate_rate:
            candidates.append(_for_teacher(self.config, content))
        return self._reply("synthesis", view, SynthesisAnswer(candidates=candidates))

    async def aclose(self) -> None:
        """Nothing to release."""


def lesson_texts(config: SimulatedTeacherConfig) -> Iterator[tuple[str, Level, str]]:
    """Every phrasebook lesson as (lesson, level, text the student is shown: its action
    and expected effect as retrieval renders them)."""
    for lesson, book in config.lessons().items():
        for level, phrase in book.items():
            action = " ".join(phrase.action.split())
            yield lesson, level, f"{action} (Expected effect: {phrase.expected_effect})"
