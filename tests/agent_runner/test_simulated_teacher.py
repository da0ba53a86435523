"""The simulated teacher: its lessons address the simulated student's mistakes (and its
useless advice none), it answers the same view the same way, its imperfections happen at
the configured rates, its generalised lessons carry no value of the case, it is never
given a case, and it diagnoses from real reward records of the verifier."""

from __future__ import annotations

import ast
import inspect
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runner.learning import simulated_teacher as module
from agent_runner.learning.simulated_teacher import (
    SUCCESS_PATH,
    SimulatedTeacher,
    SimulatedTeacherConfig,
    SimulatedTeacherConfigError,
    default_config_path,
    diagnose,
    lesson_texts,
    plan_hazard,
)
from agent_runner.learning.teacher import Teacher
from agent_runner.simulated import SimulatedLLMConfig, load_write_tools
from agent_runner.simulated import default_config_path as student_config_path
from crmbench_contracts.cases import FAILURE_CATEGORIES, Case
from crmbench_contracts.playbooks import PlaybookContent
from crmbench_contracts.rewards import CheckResult, RewardRecord
from crmbench_contracts.seeds import (
    ClientStatus,
    CompanyType,
    ContractStatus,
    DocumentEntityType,
    OpportunityStage,
    QuoteStatus,
)
from crmbench_contracts.teaching import PlannedCall, StepView, TeacherView
from crmbench_corpus.store import load_cases
from verifier.scoring import score_case

CONFIG = SimulatedTeacherConfig.from_yaml(default_config_path())
STUDENT = SimulatedLLMConfig.from_yaml(student_config_path())
WRITE_TOOLS = load_write_tools()
TEMPLATE = re.compile(r"\{\{[^}]+\}\}")


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return load_cases()


def student_rule(lesson: str) -> Any:
    return STUDENT.success if lesson == SUCCESS_PATH else STUDENT.category_rule(lesson)


def every_student_rule() -> dict[str, Any]:
    rules = {SUCCESS_PATH: STUDENT.success, "default": STUDENT.default}
    rules.update({category: STUDENT.category_rule(category) for category in FAILURE_CATEGORIES})
    return rules


def rendered(content: PlaybookContent) -> str:
    """What the student is shown of an entry (retrieval's render_guidance line)."""
    return f"{content.action.text} (Expected effect: {content.expected_effect})"


# --- views built from corpus cases ------------------------------------------------------


def fake_id(case: Case, template: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{case.case_id}/{template}"))


def filled(case: Case, value: Any) -> Any:
    """A naive action's arguments with each {{step_N...}} reference replaced by an id."""
    if isinstance(value, str):
        return TEMPLATE.sub(lambda match: fake_id(case, match.group(0)), value)
    if isinstance(value, dict):
        return {key: filled(case, item) for key, item in value.items()}
    if isinstance(value, list):
        return [filled(case, item) for item in value]
    return value


def episode_steps(case: Case) -> list[StepView]:
    """The steps of the simulated student's mistake: on a failure case the trap's naive
    calls up to the first refused one (with its expected_error code and an API-like
    message repeating the value), on a success case the reference short of its last write."""
    if case.failure is not None:
        actions = case.failure.trap.naive_actions
        first = next(i for i, action in enumerate(actions) if action.expect_error is not None)
        actions = actions[: first + 1]
    else:
        actions = case.expected.reference_actions
        writes = [i for i, action in enumerate(actions) if action.tool in WRITE_TOOLS]
        actions = actions[: writes[-1]] if writes else actions
    steps = []
    for number, action in enumerate(actions, start=1):
        arguments = filled(case, action.args)
        refused = action.expect_error is not None
        steps.append(
            StepView(
                step=number,
                tool=action.tool,
                arguments=arguments,
                status=422 if refused else 200,
                ok=not refused,
                error_code=action.expect_error,
                error_message=f"refused: {arguments!r}" if refused else None,
            )
        )
    return steps


def naive_reward(case: Case) -> RewardRecord:
    """The verifier's record of the mistaken episode: nothing written (the refused call
    changes nothing, the partial run leaves out its write), the trap's naive reply."""
    state = {"tables": {table: list(rows) for table, rows in case.seed.items()}}
    reply = case.failure.trap.naive_reply if case.failure else case.expected.reference_reply
    return score_case(case, state, {"tool_calls": []}, reply)


def case_view(
    case: Case,
    session_id: str | None = None,
    *,
    steps: list[StepView] | None = None,
    reward: RewardRecord | None = None,
    **fields: Any,
) -> TeacherView:
    return TeacherView(
        session_id=session_id or f"run/{case.case_id}/0",
        task_category=case.task_category,
        workflow=case.workflow,
        user_turns=[turn.content for turn in case.turns],
        today=case.today.isoformat(),
        steps=episode_steps(case) if steps is None else steps,
        reward=reward,
        **fields,
    )


def failed_reward(case_id: str = "CRM-X") -> RewardRecord:
    """A failed record shaped like the verifier's, naming no rule (state checks failed)."""
    return RewardRecord(
        case_id=case_id,
        episode_id=None,
        score=0.0,
        passed=False,
        verdicts={"0.7": False, "0.8": False, "0.9": False},
        checks=[
            CheckResult(
                check_id="state[0]",
                kind="field_equals",
                passed=False,
                score=0.0,
                weight=1.0,
                rationale="amount updated: the row holds another value",
            )
        ],
        collateral=[],
        structured_score=0.0,
    )


def passed_reward() -> RewardRecord:
    return failed_reward().model_copy(update={"score": 1.0, "passed": True, "checks": []})


def refused_view(session_id: str, code: str = "AMOUNT_EXCEEDS_MAX", **fields: Any) -> TeacherView:
    return TeacherView(
        session_id=session_id,
        task_category="MODIFY OPPORTUNITY",
        workflow="Opportunity Management",
        user_turns=["Set the amount on Ravenna Data Migration to 15,500,000."],
        today="2025-11-12",
        steps=[
            StepView(
                step=1,
                tool="modify_opportunity",
                arguments={"opportunity_id": "o-1", "amount": 15500000},
                status=422,
                ok=False,
                error_code=code,
            )
        ],
        **fields,
    )


async def synthesized(teacher: SimulatedTeacher, view: TeacherView) -> list[PlaybookContent]:
    reply = await teacher.synthesize(view)
    assert reply.answer is not None, reply.error
    return reply.answer.candidates


# --- (a) the phrasebook against the student --------------------------------------------


def test_the_phrasebook_covers_every_category_and_the_student_config_the_same() -> None:
    assert set(CONFIG.categories) == set(FAILURE_CATEGORIES)
    assert set(STUDENT.categories) <= set(CONFIG.categories)


@pytest.mark.parametrize(
    ("lesson", "level", "text"), list(lesson_texts(CONFIG)), ids=lambda value: str(value)[:30]
)
def test_each_lesson_addresses_its_own_mistake_in_words_and_no_other(
    lesson: str, level: str, text: str
) -> None:
    rules = every_student_rule()
    assert [name for name, rule in rules.items() if rule.addressed_by(text)] == [lesson]
    # In words: some pattern other than the one that matches the category's code name.
    in_words = [
        pattern
        for pattern in student_rule(lesson).guidance_patterns
        if not re.search(pattern, lesson, re.IGNORECASE)
    ]
    assert any(re.search(pattern, text, re.IGNORECASE) for pattern in in_words)
    assert lesson not in text


def test_useless_advice_addresses_no_mistake() -> None:
    for useless in CONFIG.useless:
        text = f"{useless.action} (Expected effect: {useless.expected_effect})"
        assert not [name for name, rule in every_student_rule().items() if rule.addressed_by(text)]


def test_the_success_lesson_is_universal_and_its_cue_pattern_matches_every_task(
    cases: list[Case],
) -> None:
    from agent_runner.learning.retrieval import task_text

    assert CONFIG.lesson_level(SUCCESS_PATH) == "universal"
    patterns = CONFIG.phrase(SUCCESS_PATH).patterns
    assert all(
        any(re.search(pattern, task_text(case), re.IGNORECASE) for pattern in patterns)
        for case in cases
    )


# --- (b) determinism --------------------------------------------------------------------


async def test_the_same_view_gets_the_same_replies_from_any_instance(cases: list[Case]) -> None:
    case = next(case for case in cases if case.failure is not None)
    view = case_view(
        case,
        reward=naive_reward(case),
        final_reply="Done! All set.",
        planned=[PlannedCall(tool="modify_opportunity", arguments={"amount": -5})],
    )
    config = CONFIG.model_copy(update={"teacher_candidate_rate": 0.5, "chars_per_token": 4.0})
    first, second = SimulatedTeacher(config), SimulatedTeacher(config)
    for name in ("triage", "review_plan", "guide_step", "review_outcome", "synthesize"):
        one = await getattr(first, name)(view)
        two = await getattr(second, name)(view)
        again = await getattr(first, name)(view)
        assert one.model_dump() == two.model_dump() == again.model_dump()
        assert one.answer is not None and one.latency_ms == 0.0
        assert one.input_tokens == math.ceil(len(view.model_dump_json()) / 4.0)
        assert one.output_tokens == math.ceil(len(one.raw_text) / 4.0)
    other = await first.triage(view.model_copy(update={"session_id": "another"}))
    assert other.call_id != (await first.triage(view)).call_id


async def test_replies_count_no_tokens_by_default() -> None:
    reply = await SimulatedTeacher(CONFIG).guide_step(refused_view("s"))
    assert (reply.input_tokens, reply.output_tokens, reply.cost_usd) == (0, 0, 0.0)


# --- (c) rates --------------------------------------------------------------------------

RATE_SESSIONS = 4000


def within_binomial(count: int, trials: int, rate: float, z: float = 4.5) -> bool:
    """Whether `count` of `trials` is within z standard deviations of `rate`."""
    spread = z * math.sqrt(rate * (1 - rate) / trials) + 1 / trials
    return abs(count / trials - rate) <= spread


def kind_of(content: PlaybookContent, diagnosed: str, config: SimulatedTeacherConfig) -> str:
    if content.level == "task":
        return "restate"
    if content.action.text in {useless.action for useless in config.useless}:
        return "useless"
    actions = {
        lesson: " ".join(config.phrase(lesson).action.split()) for lesson in config.lessons()
    }
    owner = [lesson for lesson, text in actions.items() if text == content.action.text]
    assert len(owner) == 1, content.action.text
    return "correct" if owner == [diagnosed] else "wrong"


@pytest.mark.parametrize(
    "rates",
    [
        {},
        {
            "restate_rate": 0.1,
            "wrong_rate": 0.25,
            "useless_rate": 0.15,
            "teacher_candidate_rate": 0.3,
        },
    ],
    ids=["committed", "distinct"],
)
async def test_imperfections_happen_at_the_configured_rates(rates: dict[str, float]) -> None:
    config = CONFIG.model_copy(update=rates)
    teacher = SimulatedTeacher(config)
    kinds: Counter[str] = Counter()
    for_teacher = 0
    for index in range(RATE_SESSIONS):
        view = refused_view(f"rates/{index}", reward=failed_reward())
        candidates = await synthesized(teacher, view)
        students = [c for c in candidates if c.audience == "student"]
        assert len(students) == 1
        kinds[kind_of(students[0], "AMOUNT_EXCEEDS_MAX", config)] += 1
        for_teacher += len(candidates) - 1
    expected = {
        "restate": config.restate_rate,
        "wrong": config.wrong_rate,
        "useless": config.useless_rate,
        "correct": 1 - config.restate_rate - config.wrong_rate - config.useless_rate,
    }
    for kind, rate in expected.items():
        assert within_binomial(kinds[kind], RATE_SESSIONS, rate), (kind, kinds, rate)
    assert within_binomial(for_teacher, RATE_SESSIONS, config.teacher_candidate_rate)


async def test_wrong_lessons_spread_over_the_other_lessons_and_never_address_the_mistake() -> None:
    teacher = SimulatedTeacher(
        CONFIG.model_copy(update={"wrong_rate": 1.0, "useless_rate": 0.0, "restate_rate": 0.0})
    )
    picked: Counter[str] = Counter()
    rule = student_rule("AMOUNT_EXCEEDS_MAX")
    for index in range(600):
        [content] = await synthesized(teacher, refused_view(f"w/{index}", reward=failed_reward()))
        assert not rule.addressed_by(rendered(content))
        picked[content.action.text] += 1
    assert len(picked) == len(CONFIG.lessons()) - 1


async def test_plan_review_catches_hazards_at_the_catch_rate() -> None:
    teacher = SimulatedTeacher(CONFIG)
    planned = [
        PlannedCall(
            tool="modify_opportunity", arguments={"opportunity_id": "o", "probability": 45.5}
        )
    ]
    caught = 0
    for index in range(RATE_SESSIONS):
        view = refused_view(f"plan/{index}", planned=planned).model_copy(update={"steps": []})
        reply = await teacher.review_plan(view)
        assert reply.answer is not None
        if reply.answer.guidance:
            assert reply.answer.guidance == " ".join(
                CONFIG.phrase("PROBABILITY_DECIMAL").action.split()
            )
            caught += 1
    assert within_binomial(caught, RATE_SESSIONS, CONFIG.plan_review.catch_rate)


# --- (d) generalised lessons carry no value of the case ---------------------------------

ENUM_VALUES = {
    member.value.lower()
    for enum in (
        OpportunityStage,
        QuoteStatus,
        ContractStatus,
        ClientStatus,
        CompanyType,
        DocumentEntityType,
    )
    for member in enum
}
IDENTIFYING = {"name", "first_name", "last_name", "email", "file_name", "phone", "address"}
DOMAIN_CONSTANTS = {0.0, 100.0, 10_000_000.0}
"""Numbers the rules themselves state (domain.md): a lesson may name them."""
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
QUOTED = re.compile(r"(?<!\w)'([^'\n]*)'(?!\w)|\"([^\"\n]*)\"")


def numbers_in(text: str) -> set[float]:
    found = set()
    for token in NUMBER.findall(text):
        try:
            found.add(float(token.replace(",", "")))
        except ValueError:
            continue
    return found


def walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield from walk(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, key)
    else:
        yield key, value


def case_values(case: Case, steps: list[StepView]) -> tuple[set[str], set[float]]:
    """The values that identify the case: names, emails, file names and ids of its seed
    rows, actor and calls; quoted values and emails of its turns; its numbers."""
    texts: set[str] = {case.actor.name}
    numbers: set[float] = set()
    sources: list[Any] = [case.seed, [step.arguments for step in steps]]
    for key, value in walk(sources):
        if isinstance(value, str) and (key in IDENTIFYING or key.endswith("_id")):
            texts.add(value)
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and key
            in (
                "amount",
                "value",
                "probability",
            )
        ):
            numbers.add(float(value))
    for turn in case.turns:
        texts.update(a or b for a, b in QUOTED.findall(turn.content))
        texts.update(re.findall(r"\S+@\S*", turn.content))
        numbers |= numbers_in(turn.content)
    texts = {text.strip() for text in texts if len(text.strip()) >= 3}
    return {text for text in texts if text.lower() not in ENUM_VALUES}, numbers - DOMAIN_CONSTANTS


def leaks(texts: list[str], values: set[str], numbers: set[float]) -> list[str]:
    """The case's values found in `texts`: names, emails, ids anywhere (patterns too),
    numbers of two digits or more in the prose (a pattern's `{4}` is not a value)."""
    joined = "\n".join(texts)
    found = [
        value
        for value in values
        if re.search(r"(?<!\w)" + re.escape(value) + r"(?!\w)", joined, re.IGNORECASE)
    ]
    prose = "\n".join(text for text in texts if not text.startswith(PATTERN_MARK))
    found += [str(n) for n in numbers & numbers_in(prose) if abs(n) >= 10]
    return found


PATTERN_MARK = "\x00pattern:"
PHRASEBOOK_TEXTS = [
    PATTERN_MARK + text
    for book in CONFIG.lessons().values()
    for phrase in book.values()
    for text in (phrase.cue, phrase.action, phrase.expected_effect, *phrase.patterns)
]


def lesson_text(content: PlaybookContent) -> list[str]:
    """The entry's texts; its regular expressions marked as such."""
    patterns = [*content.cue.patterns, *(r.pattern or "" for r in content.action.argument_rules)]
    prose = [content.cue.text, content.action.text, content.expected_effect]
    return [*prose, *(PATTERN_MARK + pattern for pattern in patterns)]


async def test_generalised_lessons_and_guidance_hold_no_value_of_real_cases(
    cases: list[Case],
) -> None:
    teacher = SimulatedTeacher(
        CONFIG.model_copy(update={"restate_rate": 0.0, "teacher_candidate_rate": 1.0})
    )
    failures = [case for case in cases if case.failure is not None]
    successes = [
        case
        for case in cases
        if case.failure is None
        and any(a.tool in WRITE_TOOLS for a in case.expected.reference_actions)
    ][::3]
    checked = Counter[str]()
    for case in [*failures, *successes]:
        steps = episode_steps(case)
        view = case_view(case, reward=naive_reward(case), final_reply="Done! All set.")
        values, numbers = case_values(case, steps)
        candidates = await synthesized(teacher, view)
        assert candidates, case.case_id
        texts = [text for content in candidates for text in lesson_text(content)]
        for reply in (await teacher.guide_step(view), await teacher.review_outcome(view)):
            assert reply.answer is not None
            texts.append(reply.answer.guidance)
        # A word the phrasebook itself uses for every case (a cue pattern listing words
        # that are not stages) is not this case's value.
        values -= set(leaks(PHRASEBOOK_TEXTS, values, set()))
        assert not leaks(texts, values, numbers), (
            case.case_id,
            leaks(texts, values, numbers),
            texts[0],
        )
        checked["failure" if case.failure else "success"] += 1
    assert checked["failure"] == len(failures) and checked["success"] == len(successes)


async def test_restating_lessons_are_task_level_and_repeat_the_case(cases: list[Case]) -> None:
    teacher = SimulatedTeacher(
        CONFIG.model_copy(update={"restate_rate": 1.0, "wrong_rate": 0.0, "useless_rate": 0.0})
    )
    case = next(case for case in cases if case.failure is not None)
    steps = episode_steps(case)
    [content] = await synthesized(teacher, case_view(case, reward=naive_reward(case)))
    values, numbers = case_values(case, steps)
    assert content.level == "task"
    assert leaks(lesson_text(content), values, numbers)
    assert case.turns[0].content in content.cue.text


def test_a_lesson_cue_embeds_closer_to_later_tasks_of_its_kind(cases: list[Case]) -> None:
    """With the local sentence embedder retrieval uses: for every category, the cue the
    teacher writes from one case is on average more similar to the other cases of that
    category than to the typical case of another category."""
    from agent_runner.learning.retrieval import task_text
    from crmbench_learning.embeddings import EmbeddingConfig, make_embedder

    embedder = make_embedder(EmbeddingConfig(provider="local"))
    by_category: dict[str, list[Case]] = {}
    for case in cases:
        if case.failure is not None:
            by_category.setdefault(case.failure.category, []).append(case)
    categories = sorted(by_category)
    cues = []
    for category in categories:
        first = by_category[category][0]
        view = case_view(first)
        cues.append(module.lesson_cue_text(CONFIG, category, view))
    later = [(category, case) for category in categories for case in by_category[category][1:6]]
    cue_vectors = embedder.embed(cues)
    task_vectors = embedder.embed([task_text(case) for _, case in later])
    for index, category in enumerate(categories):
        similarity = [
            sum(a * b for a, b in zip(cue_vectors[index], vector, strict=True))
            for vector in task_vectors
        ]
        own = [s for s, (owner, _) in zip(similarity, later, strict=True) if owner == category]
        other = sorted(
            s for s, (owner, _) in zip(similarity, later, strict=True) if owner != category
        )
        assert sum(own) / len(own) > other[len(other) // 2], category


def test_the_request_is_generalised_into_placeholders() -> None:
    calls = [
        ("opportunity_search", {"criteria": {"name": "Ravenna Data Migration"}}),
        ("modify_opportunity", {"opportunity_id": "x", "amount": 15500000, "stage": "Negotiation"}),
    ]
    text = module.generalise_request(
        [
            "Set the amount on Ravenna Data Migration to 15,500,000 and move it to Negotiation.",
            "Kestrel Health's rep dana@@example.com wants 33.3% by 12/21/2025, file '/tmp/a.pdf', 171k",
        ],
        calls,
        CONFIG.generalise,
    )
    assert text == (
        "Set the amount on <opportunity> to <amount> and move it to <stage>. / "
        "<name> rep <email> wants <percent> by <date>, file <value>, <number>"
    )


# --- (e) it is never given a case -------------------------------------------------------


def test_the_teacher_needs_only_its_config_and_its_module_never_imports_a_case() -> None:
    assert list(inspect.signature(SimulatedTeacher.__init__).parameters) == ["self", "config"]
    for name in ("triage", "review_plan", "guide_step", "review_outcome", "synthesize"):
        parameters = inspect.signature(getattr(SimulatedTeacher, name)).parameters
        assert list(parameters) == ["self", "view"]
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    imported = {
        (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert not [name for _, name in imported if name in ("Case", "Expected", "FailureSpec")]
    assert not [mod for mod, _ in imported if mod.startswith(("crmbench_corpus", "agent_runner"))]
    teacher: Teacher = SimulatedTeacher(CONFIG)
    assert teacher.name == CONFIG.name and teacher.model == CONFIG.model


# --- (f) diagnosis from the verifier's records -------------------------------------------


def with_hidden_expectations(reward: RewardRecord) -> RewardRecord:
    """The record with every check's expected and actual values replaced: diagnosis must
    not change, since it may not read them."""
    checks = [check.model_copy(update={"expected": "?", "actual": "?"}) for check in reward.checks]
    return reward.model_copy(update={"checks": checks})


def test_diagnosis_reads_refusals_then_rules_then_the_success_path(cases: list[Case]) -> None:
    failure = next(
        case
        for case in cases
        if case.failure is not None
        and any(fact.kind == "reason" for fact in case.expected.communicate)
    )
    assert failure.failure is not None
    category = failure.failure.category
    reward = naive_reward(failure)
    assert not reward.passed
    by_refusal = diagnose(CONFIG, case_view(failure, reward=reward))
    assert by_refusal is not None and (by_refusal.lesson, by_refusal.source) == (
        category,
        "refusal",
    )
    for record in (reward, with_hidden_expectations(reward)):
        by_rule = diagnose(CONFIG, case_view(failure, steps=[], reward=record))
        assert by_rule is not None and (by_rule.lesson, by_rule.source) == (category, "reward_rule")

    success = next(
        case
        for case in cases
        if case.failure is None
        and any(a.tool in WRITE_TOOLS for a in case.expected.reference_actions)
    )
    partial = naive_reward(success)
    assert not partial.passed
    by_state = diagnose(CONFIG, case_view(success, reward=with_hidden_expectations(partial)))
    assert by_state is not None and (by_state.lesson, by_state.source) == (
        SUCCESS_PATH,
        "reward_state",
    )
    assert diagnose(CONFIG, case_view(success, steps=[], reward=passed_reward())) is None


def test_diagnosis_follows_code_aliases_and_skips_codes_without_a_lesson() -> None:
    view = refused_view("s", code="NOT_FOUND")
    found = diagnose(CONFIG, view)
    assert found is not None and found.lesson == CONFIG.code_aliases["NOT_FOUND"]
    assert diagnose(CONFIG, refused_view("s", code="INTERNAL_ERROR")) is None
    unknown = diagnose(CONFIG, refused_view("s", code="INTERNAL_ERROR", reward=failed_reward()))
    assert unknown is not None and unknown.lesson == SUCCESS_PATH


# --- the five calls ----------------------------------------------------------------------


async def test_triage_coaches_without_playbook_guidance_and_leaves_the_student_alone_with_it() -> (
    None
):
    teacher = SimulatedTeacher(CONFIG)
    bounds = CONFIG.triage
    for index in range(50):
        bare = await teacher.triage(refused_view(f"t/{index}"))
        guided = await teacher.triage(refused_view(f"t/{index}", playbook_guidance="1. Do it."))
        assert bare.answer is not None and guided.answer is not None
        assert (bare.answer.lane, guided.answer.lane) == ("coach", "auto")
        for answer in (bare.answer, guided.answer):
            assert bounds.confidence_low <= answer.confidence <= bounds.confidence_high


HAZARDS: list[tuple[dict[str, Any], str]] = [
    ({"amount": -5}, "NEGATIVE_AMOUNT"),
    ({"amount": 0}, "ZERO_AMOUNT"),
    ({"amount": CONFIG.plan_review.amount_max + 1}, "AMOUNT_EXCEEDS_MAX"),
    ({"amount": "$5,000"}, "TYPE_MISMATCH"),
    ({"probability": 101}, "PROBABILITY_OUT_OF_RANGE"),
    ({"probability": 12.5}, "PROBABILITY_DECIMAL"),
    ({"close_date": "12/21/2025"}, "INVALID_DATE_FORMAT"),
    ({"close_date": "2025-02-30"}, "INVALID_DATE_FORMAT"),
    ({"close_date": "2025-11-11"}, "PAST_DATE"),
    ({"stage": " Negotiation "}, "ENUM_WHITESPACE"),
    ({"name": "   "}, "BLANK_STRING"),
    ({"email": "dana@@example.com"}, "MALFORMED_EMAIL"),
    ({"file_name": "/var/tmp/a.pdf"}, "UNSAFE_FILENAME"),
    ({"file_name": "pricing sheet"}, "MISSING_FILE_EXTENSION"),
]


@pytest.mark.parametrize(("arguments", "category"), HAZARDS, ids=[c for _, c in HAZARDS])
async def test_plan_review_names_the_hazard_it_sees(
    arguments: dict[str, Any], category: str
) -> None:
    planned = [PlannedCall(tool="modify_opportunity", arguments=arguments)]
    assert plan_hazard(planned, "2025-11-12", CONFIG.plan_review) == (
        category,
        f"modify_opportunity.{next(iter(arguments))}",
    )
    sure = SimulatedTeacher(
        CONFIG.model_copy(
            update={"plan_review": CONFIG.plan_review.model_copy(update={"catch_rate": 1.0})}
        )
    )
    reply = await sure.review_plan(refused_view("p", planned=planned))
    assert reply.answer is not None
    assert student_rule(category).addressed_by(reply.answer.guidance)


async def test_plan_review_approves_a_clean_plan() -> None:
    planned = [
        PlannedCall(
            tool="create_new_opportunity",
            arguments={
                "amount": 5000,
                "probability": 40,
                "close_date": "2025-11-12",
                "stage": "Proposal",
                "name": "A deal",
            },
        ),
        PlannedCall(tool="upload_document", arguments={"file_name": "deck.pptx"}),
        PlannedCall(tool="create_new_contact", arguments={"email": "dana@example.com"}),
    ]
    assert plan_hazard(planned, "2025-11-12", CONFIG.plan_review) is None
    reply = await SimulatedTeacher(CONFIG).review_plan(refused_view("p", planned=planned))
    assert reply.answer is not None and reply.answer.guidance == ""


@pytest.mark.parametrize("category", sorted(FAILURE_CATEGORIES))
async def test_step_guidance_after_a_refusal_addresses_its_mistake(category: str) -> None:
    teacher = SimulatedTeacher(CONFIG)
    reply = await teacher.guide_step(refused_view("g", code=category))
    assert reply.answer is not None and student_rule(category).addressed_by(reply.answer.guidance)
    repeated = refused_view("g", code=category, guidance_given=[reply.answer.guidance])
    again = await teacher.guide_step(repeated)
    assert again.answer is not None and again.answer.guidance == ""


async def test_step_guidance_says_nothing_after_a_successful_call() -> None:
    view = refused_view("g")
    ok = view.model_copy(
        update={
            "steps": [
                view.steps[0].model_copy(update={"ok": True, "status": 200, "error_code": None})
            ]
        }
    )
    reply = await SimulatedTeacher(CONFIG).guide_step(ok)
    assert reply.answer is not None and reply.answer.guidance == ""


@pytest.mark.parametrize(
    ("reply_text", "retry"),
    [
        ("Done! All set.", True),
        ("I can't do that: the maximum for a deal is 10,000,000.", False),
        ("Which amount did you mean?", False),
    ],
)
async def test_outcome_review_retries_a_claimed_success_after_a_refusal(
    reply_text: str, retry: bool
) -> None:
    teacher = SimulatedTeacher(CONFIG)
    reply = await teacher.review_outcome(refused_view("o", final_reply=reply_text))
    assert reply.answer is not None and reply.answer.retry is retry
    if retry:
        assert student_rule("AMOUNT_EXCEEDS_MAX").addressed_by(reply.answer.guidance)
    clean = refused_view("o", final_reply=reply_text).model_copy(update={"steps": []})
    no_refusal = await teacher.review_outcome(clean)
    assert no_refusal.answer is not None and not no_refusal.answer.retry


async def test_synthesis_teaches_only_after_something_went_wrong() -> None:
    teacher = SimulatedTeacher(CONFIG.model_copy(update={"teacher_candidate_rate": 1.0}))
    clean = refused_view("s", reward=passed_reward()).model_copy(update={"steps": []})
    assert await synthesized(teacher, clean) == []
    candidates = await synthesized(teacher, refused_view("s", reward=failed_reward()))
    assert [c.audience for c in candidates] == ["student", "teacher"]
    missing = await teacher.synthesize(refused_view("s"))
    assert missing.answer is None and missing.error
    # A refusal the student recovered from still teaches its lesson.
    recovered = await synthesized(teacher, refused_view("s", reward=passed_reward()))
    assert [c.audience for c in recovered] == ["student", "teacher"]


async def test_a_correct_lesson_cue_holds_the_situation_and_the_task_category() -> None:
    teacher = SimulatedTeacher(
        CONFIG.model_copy(update={"restate_rate": 0.0, "wrong_rate": 0.0, "useless_rate": 0.0})
    )
    [content] = await synthesized(teacher, refused_view("c", reward=failed_reward()))
    phrase = CONFIG.phrase("AMOUNT_EXCEEDS_MAX")
    assert content.level == CONFIG.level
    assert content.cue.text.endswith(f"\nTask category: modify opportunity\n{phrase.cue}")
    assert "<name>" in content.cue.text and "<amount>" in content.cue.text
    assert "Ravenna" not in content.cue.text and "15,500,000" not in content.cue.text
    assert content.cue.patterns == phrase.patterns
    assert content.action.tools == phrase.tools


# --- configuration ----------------------------------------------------------------------


def write_config(tmp_path: Path, change: Any) -> Path:
    import yaml

    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d["categories"].pop("PAST_DATE"), "categories"),
        (
            lambda d: d["categories"]["PAST_DATE"]["domain"].pop("action"),
            "categories.PAST_DATE.domain.action",
        ),
        (lambda d: d.update(wrong_rate="0.1"), "wrong_rate"),
        (
            lambda d: d.update(wrong_rate=0.5, useless_rate=0.4, restate_rate=0.2),
            "restate_rate + wrong_rate",
        ),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["code_aliases"].update(NOT_FOUND="NOPE"), "code_aliases"),
        (lambda d: d.update(level="task"), "level"),
    ],
    ids=["missing category", "missing action", "string rate", "rates", "extra", "alias", "level"],
)
def test_a_bad_config_is_refused_naming_the_field(tmp_path: Path, change: Any, named: str) -> None:
    with pytest.raises(SimulatedTeacherConfigError, match=re.escape(named)):
        SimulatedTeacherConfig.from_yaml(write_config(tmp_path, change))
