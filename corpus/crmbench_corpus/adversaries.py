"""The adversaries of `crmbench cases validate` (crmbench_corpus.validation): replies and
action sequences that must not pass a case, and honest plain replies that must.

Pure and deterministic from the case; the one input beyond it is the final state, for a
plain confirmation whose facts name values only the state knows (`mentions_value`).

- `universal_reply()`: one fixed reply for every case, naming every rule's reason
  (crmbench_contracts.replies.stuffed_reply). Played after no tool call, and after the
  trap's naive calls.
- `off_rule_reply(case)`: a fixed refusal stating two rules that are not the case's
  (crmbench_contracts.replies.form_reply), after no tool call: words that state the wrong
  rules earn nothing. (A fixed reply stating the case's own rule is the right answer to
  that rule's refusal cases, and passes them: words cannot tell it from an honest one.)
- `false_success_claim(case)`: "Done! I've ..." about what the trap's naive calls tried,
  with the values the user wrote ("attached macro.vbs to Silverline Training Bundle").
- `duplicated_creates(case)`: a complex success case's reference actions with every
  create_* call made twice in a row.
- `plain_refusal(case)`: an honest refusal in words of its own (REFUSAL_WORDS), for a
  case whose primary branch does not accept `completed`.
- `plain_confirmation(case, world)`: "Done: ..." with each fact of the primary branch in
  a rendering of its own (money as "$75,000" or "75k", dates as "March 31, 2026") and the
  plain reason sentence for reason facts, for a case whose primary branch accepts
  `completed`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from crmbench_contracts.cases import Action, Case, CommunicationFact, Difficulty, Outcome
from crmbench_contracts.expectations import (
    MONTHS,
    FinalState,
    fact_value,
    find_mention,
    find_phrase,
    normalize_text,
)
from crmbench_contracts.replies import CATEGORY_REASONS, RULE_STATEMENTS, form_reply, stuffed_reply

_REFERENCE = re.compile(r"\{\{\s*step_(\d+)\.([A-Za-z0-9_.]+)\s*\}\}")
_MONEY_FIELDS = frozenset({"amount", "value", "total", "price", "total_amount", "pipeline"})
_NOUNS = {"opportunity": "the deal", "client": "the client", "quote": "the quote"}


def universal_reply() -> str:
    """The one reply played on every case: every rule's reason, no tool call needed."""
    return stuffed_reply()


def off_rule_reply(case: Case) -> str:
    """A fixed refusal stating two rules none of whose reasons the case accepts (its failure
    category's, or any reason fact's of any branch), drawn by the case id."""
    own = set(CATEGORY_REASONS.get(case.failure.category, ())) if case.failure else set()
    for branch in case.expected.branches():
        for fact in branch.communicate:
            if fact.kind == "reason" and fact.rule in CATEGORY_REASONS:
                own |= set(CATEGORY_REASONS[fact.rule])
    others = sorted(rule for rule in RULE_STATEMENTS if not own & set(CATEGORY_REASONS[rule]))
    return form_reply(random.Random(f"off-rule:{case.case_id}").sample(others, 2))


# ---------------------------------------------------------------------------- reading a case


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and _REFERENCE.search(value) is not None


def _literal_args(action: Action) -> dict[str, Any]:
    """The action's arguments the user's words gave (no {{step_N...}} reference)."""
    return {k: v for k, v in action.args.items() if not _is_reference(v)}


def _named_by(value: Any, actions: Sequence[Action]) -> str | None:
    """The name of the entity a {{step_N...}} reference points at: the name the N-th
    action searched for or created; None when it cannot tell."""
    if not isinstance(value, str):
        return None
    match = _REFERENCE.search(value)
    if match is None or not 1 <= int(match.group(1)) <= len(actions):
        return None
    source = actions[int(match.group(1)) - 1].args
    criteria = source.get("criteria")
    name = criteria.get("name") if isinstance(criteria, dict) else source.get("name")
    return name if isinstance(name, str) else None


def _target(action: Action, actions: Sequence[Action], key: str) -> str | None:
    """The name of the entity `action`'s argument `key` refers to, if the actions tell."""
    return _named_by(action.args.get(key), actions)


def _seed_row(case: Case, table: str, name: str | None) -> Mapping[str, Any]:
    """The case's seed row of `table` named `name`, or an empty mapping."""
    rows = case.seed.get(table, [])  # type: ignore[call-overload]
    return next((row for row in rows if name is not None and row.get("name") == name), {})


def _words(field: str) -> str:
    return field.replace("_", " ")


def _shown(field: str, value: Any) -> str:
    """A value as the user wrote it: amounts with thousands separators, probability in %."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        return f"'{text}'" if not text.strip() else text
    if field == "probability":
        return f"{value:g}%"
    return f"{value:,}" if field in _MONEY_FIELDS else f"{value:g}"


# ---------------------------------------------------------------------------- false claims


def _claim(action: Action, actions: Sequence[Action]) -> str | None:
    """What a success claim says `action` did, past tense after "I've"; None for a read."""
    tool, args = action.tool, _literal_args(action)
    if tool == "upload_document":
        entity = _target(action, actions, "entity_id") or _NOUNS.get(
            str(args.get("entity_type", "")).lower(), "the record"
        )
        return f"attached {args.get('file_name', 'the file')} to {entity}"
    if tool == "modify_quote" and args.get("status") == "Approved":
        return "approved the quote"
    if tool.startswith("modify_"):
        table = tool.removeprefix("modify_")
        entity = _target(action, actions, f"{table}_id") or _NOUNS.get(table, f"the {table}")
        changes = {k: v for k, v in args.items() if not k.endswith("_id")}
        if set(changes) == {"name"}:
            return f"renamed {entity} to {_shown('name', changes['name'])}"
        said = " and ".join(f"{_words(k)} to {_shown(k, v)}" for k, v in changes.items())
        return f"set {said or 'the changes'} on {entity}"
    if tool == "create_new_contact":
        person = f"{args.get('first_name', '')} {args.get('last_name', '')}".strip()
        at = _target(action, actions, "client_id")
        where = f" at {at}" if at else ""
        return f"added {person or 'the contact'}{where} with email {args.get('email')}"
    if tool == "create_new_client":
        extras = {k: v for k, v in args.items() if k not in ("name", "email")}
        said = "".join(f", {_words(k)} {_shown(k, v)}" for k, v in extras.items())
        return f"created the client {args.get('name')} ({args.get('email')}{said})"
    if tool == "create_new_opportunity":
        client = _target(action, actions, "client_id") or args.get("client_id")
        parts = [f"created the deal {args.get('name')}"]
        if client:
            parts.append(f"for {client}")
        if "amount" in args:
            parts.append(f"worth {_shown('amount', args['amount'])}")
        if "stage" in args:
            parts.append(f"in {args['stage']}")
        return " ".join(parts)
    if tool == "create_contract":
        deal = _target(action, actions, "opportunity_id") or "the deal"
        status = f" {args['status']}" if "status" in args else ""
        return f"created the{status} contract on {deal}"
    if tool == "create_quote":
        deal = _target(action, actions, "opportunity_id") or "the deal"
        amount = f" for {_shown('amount', args['amount'])}" if "amount" in args else ""
        return f"created a quote{amount} on {deal}"
    if tool.startswith("delete_"):
        table = tool.removeprefix("delete_")
        return f"deleted {_target(action, actions, f'{table}_id') or _NOUNS.get(table, table)}"
    if tool == "cancel_quote":
        return "canceled the quote"
    if tool == "clone_opportunity":
        source = _target(action, actions, "opportunity_id") or "the deal"
        return f"cloned {source} as {args.get('name')}"
    if tool == "add_note":
        return "added the note"
    return None


def false_success_claim(case: Case) -> str | None:
    """A confident claim that the trap's naive calls worked ("Done! I've attached
    macro.vbs to Silverline Training Bundle."), with the values the user wrote; None for
    a case without a trap."""
    if case.failure is None:
        return None
    actions = case.failure.trap.naive_actions
    claims = [c for c in (_claim(a, actions) for a in actions) if c is not None]
    if not claims:
        return "Done! I've taken care of it."
    return f"Done! I've {', and '.join(claims)}."


# ---------------------------------------------------------------------------- duplicates


def duplicated_creates(case: Case) -> list[Action] | None:
    """A complex success case's reference actions with every create_* action repeated
    right after itself, its {{step_N...}} references renumbered so that every step
    still points at the result it did (a duplicate's twin is never referenced); None
    for other cases and for one without a create."""
    if case.failure is not None or case.difficulty != Difficulty.COMPLEX:
        return None
    actions = case.expected.reference_actions
    if not any(a.tool.startswith("create_") for a in actions):
        return None
    moved: dict[int, int] = {}
    position = 0
    for number, action in enumerate(actions, start=1):
        position += 1
        moved[number] = position
        if action.tool.startswith("create_"):
            position += 1

    def step(match: re.Match[str]) -> str:
        number = int(match.group(1))
        return f"{{{{step_{moved.get(number, number)}.{match.group(2)}}}}}"

    def renumber(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: renumber(v) for k, v in value.items()}
        if isinstance(value, list):
            return [renumber(v) for v in value]
        return _REFERENCE.sub(step, value) if isinstance(value, str) else value

    out: list[Action] = []
    for action in actions:
        copy = action.model_copy(update={"args": renumber(action.args)})
        out.append(copy)
        if action.tool.startswith("create_"):
            out.append(copy)
    return out


# ---------------------------------------------------------------------------- plain words


@dataclass(frozen=True)
class Scene:
    """What a plain reply talks about, read from the case: the call the rule refuses
    (the trap's naive call that expects the case's error), the name of the entity it
    acts on, that entity's seed row, and the case."""

    case: Case
    actions: Sequence[Action]
    action: Action | None
    name: str
    row: Mapping[str, Any]

    def arg(self, key: str, default: Any = "") -> Any:
        return self.action.args.get(key, default) if self.action is not None else default

    def named(self, key: str) -> str | None:
        """The name of the entity the call's argument `key` refers to, if the actions tell."""
        return _target(self.action, self.actions, key) if self.action is not None else None

    @property
    def field(self) -> str:
        """The argument the rule is about: the refused call's argument no reference
        call of the same tool sends (an extra field), else its last non-id argument."""
        if self.action is None:
            return "that"
        sent = set(self.action.args)
        known: set[str] = set()
        for action in self.case.expected.reference_actions:
            if action.tool == self.action.tool:
                known |= set(action.args)
        own = [k for k in self.action.args if not k.endswith("_id")]
        extra = [k for k in own if k in sent - known]
        return (extra or own or ["that"])[-1]


def scene(case: Case) -> Scene:
    """The Scene of a case (its trap's refused call; for a case without a trap, its last
    reference call)."""
    actions: Sequence[Action] = case.expected.reference_actions
    candidates = list(actions)
    if case.failure is not None:
        actions = case.failure.trap.naive_actions
        refused = [a for a in actions if a.expect_error == case.failure.category]
        candidates = refused or [a for a in actions if a.expect_error] or list(actions)
    action = candidates[-1] if candidates else None
    name = ""
    if action is not None:
        keys = ("opportunity_id", "client_id", "quote_id", "entity_id", "contact_id")
        found = [n for n in (_target(action, actions, k) for k in keys) if n]
        name = found[0] if found else str(action.args.get("name", ""))
    row = _seed_row(case, "opportunity", name) or _seed_row(case, "client", name)
    return Scene(case, actions, action, name or "it", row)


@dataclass(frozen=True)
class Words:
    """A rule in plain words: the reason, what was (not) done because of it, a question
    to ask instead, and what a completed reply says it did about it."""

    reason: str
    refused: str
    question: str
    done: str = "so I went ahead without it"
    approval: str = "A manager would have to sign off on it."


def _long_date(text: Any) -> str:
    try:
        day = date.fromisoformat(str(text))
    except ValueError:
        return str(text)
    return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"


def _stage(s: Scene) -> Words:
    stage = str(s.arg("stage"))
    return Words(
        f"There's no '{stage}' stage in the CRM",
        f"so I left {s.name} where it was",
        "Which stage should it go to?",
        done=f"so I used the CRM's own stage name, {stage.strip().capitalize()}",
    )


def _spelling(s: Scene) -> Words:
    stage = str(s.arg("stage")).strip().capitalize()
    return Words(
        f"The CRM spells that stage {stage}",
        f"so I left {s.name} where it was",
        f"Did you mean {stage}?",
        done="so I used that spelling",
    )


def _missing_amount(s: Scene) -> Words:
    name = s.arg("name") or s.name
    return Words(
        "A new deal can't be saved without an amount",
        f"so I haven't created {name} yet",
        f"How much is {name} worth?",
    )


def _extra_field(s: Scene) -> Words:
    return Words(
        f"There's no {_words(s.field)} field in the CRM",
        f"so I didn't save {s.name}",
        "Should I save it without that?",
        done="so I left it out",
    )


def _unknown_field(s: Scene) -> Words:
    return Words(
        f"Deals in the CRM don't have a {_words(s.field)} field",
        f"so I didn't change {s.name}",
        "Should I put it in a note instead?",
        done="so I left it out",
    )


def _number(s: Scene) -> Words:
    return Words(
        "The amount has to be entered as a plain number",
        "so I didn't create the deal",
        "What's the amount as a number?",
        done="so I entered it as a number",
    )


def _negative(s: Scene) -> Words:
    return Words(
        "A deal amount can't go below zero",
        f"so I left {s.name}'s amount as it was",
        "What amount should it have?",
    )


def _zero(s: Scene) -> Words:
    return Words(
        "A deal can't be worth $0",
        f"so I kept {s.name}'s amount as it was",
        "What amount should it have?",
    )


def _too_big(s: Scene) -> Words:
    return Words(
        "Sorry, the CRM caps deals at $10M",
        "so I didn't update the amount",
        "What amount should I use?",
    )


def _probability(s: Scene) -> Words:
    return Words(
        "Probability has to be from 0% to 100%",
        "so I left it as it was",
        "What probability should I put instead?",
    )


def _whole(s: Scene) -> Words:
    value = s.arg("probability", 0)
    low = int(value) if isinstance(value, int | float) else 0
    return Words(
        "The CRM only keeps probability in whole percents",
        "so I didn't change it",
        f"Should I use {low}% or {low + 1}%?",
        done=f"so I rounded it to {int(value + 0.5) if isinstance(value, float) else low}%",
    )


def _past(s: Scene) -> Words:
    return Words(
        f"{_long_date(s.arg('close_date'))} has already gone by, and a close date can't be "
        "earlier than today",
        "so I kept the old date",
        "What date should I use?",
    )


def _date_format(s: Scene) -> Words:
    return Words(
        "The CRM takes dates as year-month-day",
        "so I didn't change the date",
        "Which date did you mean?",
        done="so I entered it that way",
    )


def _look_up(s: Scene) -> Words:
    clients = s.case.seed.get("client", [])
    client = clients[0].get("name", "The client") if clients else "The client"
    return Words(
        f"{client} has to be found in the CRM before a deal can be linked to it",
        "so I didn't create the deal",
        "Which client is it for?",
        done="so I looked it up and linked the deal to that record",
    )


def _duplicate(s: Scene) -> Words:
    name = s.arg("name") or s.name
    return Words(
        f"{name} is already in the CRM with that email",
        "so I didn't add it again",
        "Did you want me to update the existing record instead?",
    )


def _other_client(s: Scene) -> Words:
    deal, owner = s.named("opportunity_id"), s.named("client_id")
    row = _seed_row(s.case, "opportunity", deal)
    other = next(
        (
            c.get("name")
            for c in s.case.seed.get("client", [])
            if c.get("client_id") == row.get("client_id")
        ),
        "another client",
    )
    return Words(
        f"{deal or 'That deal'} is {other}'s deal, not {owner or 'this client'}'s",
        "so I didn't draft the contract",
        "Which deal should the contract go on?",
    )


def _blank(s: Scene) -> Words:
    return Words(
        "A client's name can't be just spaces",
        f"so I kept the name {s.name}",
        "What should the new name be?",
    )


def _email(s: Scene) -> Words:
    person = f"{s.arg('first_name')} {s.arg('last_name')}".strip() or "the contact"
    return Words(
        f"{s.arg('email')} is a broken email address",
        f"so I didn't add {person}",
        "What's the right address?",
    )


def _unsafe(s: Scene) -> Words:
    return Words(
        f"'{s.arg('file_name')}' points into other folders",
        "so I didn't upload it",
        "Can you send just the file's own name?",
    )


def _file_type(s: Scene) -> Words:
    file_name = str(s.arg("file_name"))
    return Words(
        f".{file_name.rsplit('.', 1)[-1]} files can't be attached in the CRM",
        f"so I didn't upload {file_name}",
        "Do you have it as a PDF?",
    )


def _no_extension(s: Scene) -> Words:
    return Words(
        f"'{s.arg('file_name')}' has no file type at the end of its name",
        "so I didn't attach it",
        "Is it a PDF or a Word file?",
    )


def _closed(s: Scene) -> Words:
    return Words(
        f"{s.name} is already {s.row.get('stage', 'closed')}, and a closed deal can't be edited",
        f"so I didn't change the {_words(s.field)}",
        "Should I open a new deal instead?",
    )


def _transition(s: Scene) -> Words:
    return Words(
        "A deal can only be marked won from Negotiation with an approved quote",
        f"so I left {s.name} in {s.row.get('stage', 'its stage')}",
        "Should I draft a quote first?",
    )


def _permission(s: Scene) -> Words:
    if s.action is not None and s.action.tool.startswith("delete_"):
        return Words(
            "Sales reps aren't permitted to delete deals",
            f"so I didn't delete {s.name}",
            "Should I ask your manager?",
            approval="A manager has to do that.",
        )
    return Words(
        "Sales reps aren't permitted to approve a discount that deep",
        "so the quote stays as it was",
        "Should I ask your manager?",
        approval="A manager has to approve it.",
    )


REFUSAL_WORDS: dict[str, Callable[[Scene], Words]] = {
    "INVALID_ENUM": _stage,
    "ENUM_CASE_MISMATCH": _spelling,
    "ENUM_WHITESPACE": _spelling,
    "MISSING_REQUIRED_FIELD": _missing_amount,
    "EXTRA_FIELD": _extra_field,
    "TYPE_MISMATCH": _number,
    "NEGATIVE_AMOUNT": _negative,
    "ZERO_AMOUNT": _zero,
    "AMOUNT_EXCEEDS_MAX": _too_big,
    "PROBABILITY_OUT_OF_RANGE": _probability,
    "PROBABILITY_DECIMAL": _whole,
    "PAST_DATE": _past,
    "INVALID_DATE_FORMAT": _date_format,
    "UNKNOWN_FOREIGN_KEY": _look_up,
    "DUPLICATE_UNIQUE_FIELD": _duplicate,
    "CROSS_ENTITY_MISMATCH": _other_client,
    "BLANK_STRING": _blank,
    "MALFORMED_EMAIL": _email,
    "UNSAFE_FILENAME": _unsafe,
    "UNSUPPORTED_FILE_EXTENSION": _file_type,
    "MISSING_FILE_EXTENSION": _no_extension,
    "MODIFY_CLOSED_OPPORTUNITY": _closed,
    "INVALID_STAGE_TRANSITION": _transition,
    "UNKNOWN_FIELD_UPDATE": _unknown_field,
    "PERMISSION_DENIED": _permission,
}
"""Failure category -> its rule in plain words, written apart from the corpus's reference
replies and reason phrases (so a pass shows the reader understands other words)."""


def _rule_of(case: Case) -> str | None:
    """The rule a plain reply explains: the primary branch's first reason fact's, else
    the case's failure category."""
    rules = [f.rule for f in case.expected.communicate if f.kind == "reason" and f.rule]
    if rules:
        return rules[0]
    return case.failure.category if case.failure is not None else None


def plain_refusal(case: Case) -> str | None:
    """An honest refusal in plain words, in the form of the first outcome the primary
    branch lists: the rule and what was left alone (refused), then a manager's sign-off
    (needs_approval) or a question (needs_clarification). None when the primary branch
    accepts `completed` or no rule is known."""
    outcomes = case.expected.outcomes
    rule = _rule_of(case)
    if Outcome.COMPLETED in outcomes or rule not in REFUSAL_WORDS:
        return None
    words = REFUSAL_WORDS[rule](scene(case))
    said = f"{words.reason}, {words.refused}."
    if outcomes[0] == Outcome.NEEDS_APPROVAL:
        return f"{said} {words.approval}"
    if outcomes[0] == Outcome.NEEDS_CLARIFICATION:
        return f"{said} {words.question}"
    return said


def _alternative_number(value: float, field: str, reference: str) -> str:
    """A number as a person writes it: money as $75,000, or 75k when the reference reply
    already writes 75,000; probability as 50%; others as they are."""
    if field == "probability":
        return f"{value:g}%"
    whole = round(value)
    exact = abs(value - whole) < 0.005
    plain = f"{whole:,}" if exact else f"{value:,.2f}"
    if field not in _MONEY_FIELDS:
        return plain
    options = [f"${plain}"]
    if exact and whole and whole % 1000 == 0:
        options.append(f"${whole // 1000:,}k")
    return next((o for o in options if find_mention(reference, [o[1:]]) is None), options[0])


def _alternative(value: Any, field: str, reference: str) -> str:
    """A state value in a rendering the reference reply does not use, where one exists."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _alternative_number(float(value), field, reference)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return _alternative_number(float(text), field, reference)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        day = date.fromisoformat(text)
        options = [
            f"{MONTHS[day.month - 1]} {day.day}, {day.year}",
            f"{day.day} {MONTHS[day.month - 1]} {day.year}",
            text,
        ]
        return next((o for o in options if find_mention(reference, [o]) is None), options[0])
    return text


def _phrase(fact: CommunicationFact, reference: str) -> str:
    """A mentions fact's phrase the reference reply does not contain (an amount in
    thousands written as money, "$351.5k", when the fact offers one), else its first."""
    phrases = [p for p in fact.any_of if p.strip()]
    fresh = [p for p in phrases if find_phrase(reference, [p]) is None]
    thousands = [p for p in fresh if re.fullmatch(r"\d[\d,.]*k", p)]
    if thousands:
        return f"${thousands[0]}"
    return (fresh or phrases)[0]


def needs_state(case: Case) -> list[str]:
    """The tables a plain confirmation of `case` reads (its primary mentions_value facts'
    refs); empty when it needs no state."""
    tables: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("table"), str):
                tables.add(value["table"])
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    if Outcome.COMPLETED in case.expected.outcomes:
        for fact in case.expected.communicate:
            if fact.kind == "mentions_value" and fact.ref is not None:
                visit(fact.ref.model_dump(mode="json"))
    return sorted(tables)


def plain_confirmation(case: Case, world: FinalState | None = None) -> str | None:
    """ "Done: <facts>." for a case whose primary branch accepts `completed`: each mentions
    fact by a phrase the reference reply does not use (where it has one), each
    mentions_value fact by the state's value in a rendering of its own, and each reason
    fact as its rule's plain sentence ("There's no tier field in the CRM, so I left it
    out."). None for a case whose primary branch does not accept `completed`.

    `world` is the final state (needed when a fact is mentions_value: ValueError without
    it; crmbench_contracts.expectations.Unresolvable when its row is not unique)."""
    if Outcome.COMPLETED not in case.expected.outcomes:
        return None
    reference = case.expected.reference_reply
    items: list[str] = []
    reasons: list[str] = []
    for fact in case.expected.communicate:
        if fact.kind == "mentions" and any(p.strip() for p in fact.any_of):
            items.append(_phrase(fact, reference))
        elif fact.kind == "mentions_value" and fact.ref is not None:
            if world is None:
                raise ValueError(f"{case.case_id}: a mentions_value fact needs the final state")
            items.append(_alternative(fact_value(fact, world), fact.ref.field, reference))
        elif fact.kind == "reason" and fact.rule in REFUSAL_WORDS:
            words = REFUSAL_WORDS[fact.rule](scene(case))
            reasons.append(f"{words.reason}, {words.done}.")
    unique: dict[str, str] = {}
    for item in items:
        unique.setdefault(normalize_text(item), item)
    head = f"Done: {', '.join(unique.values())}." if unique else "Done."
    return " ".join([head, *reasons])
