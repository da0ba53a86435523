"""What a golden case's expectations mean against a final state and a reply: the one
implementation of the matching rules, shared by the verifier and the case importers.
Pure functions, no I/O.

Value matching (the values of `where` dicts, `value`, and the operators' arguments)
  A plain value must equal the row's field. Numbers compare as floats within 0.005 (a
  numeric string in the row counts as a number); booleans only equal booleans; strings
  compare exactly; lists and objects compare element by element under the same rules;
  null equals only null. A `where` key the table's rows do not have fails the check.
  A dict whose keys start with "$" is an operator expression; all its operators must hold:
    {"$ref": {table, where, field}}  the `field` of the UNIQUE row of `table` matching
                                     `where` in the final state (none or several rows:
                                     the check fails and says which)
    {"$icontains": "text"}           case-insensitive substring of a string field
    {"$in": [v1, v2, ...]}           matches any of the values
    {"$ne": v}                       does not match v
    {"$null": true|false}            the field is (not) null
  Any other operator is Unresolvable, like a $ref without its row: a defect of the case,
  which fails the check that holds it (the rules raise nothing else on a case).

State assertions
  row_exists: at least one row matches `where`; row_absent: none does; field_equals:
  exactly one row matches `where` and its `field` matches `value`; count: the number of
  matching rows equals `count`.

Allowed changes
  Each entry of the change log must match a rule: same table, op in `ops`, `where`
  matches the row (`after` for INSERT and UPDATE, `before` for DELETE; $ref resolves in
  the FINAL state), and for an UPDATE of a rule with `fields`, the fields that differ
  between before and after are among `fields`. Entries are attributed in log order to
  the first matching rule that has room: a rule with `max_rows` covers changes to at most
  that many distinct rows (a further change to a row the rule already covers uses no
  extra room). An entry no rule takes is collateral damage.

Communication facts (`read_fact`)
  mentions: one of `any_of` appears in the reply, case-insensitively, whitespace
  collapsed, typographic dashes and quotes read as ASCII; with `affirmed`, as a whole
  word in a clause that does not negate it (crmbench_contracts.replies.clauses).
  mentions_value: the value of `ref` in the final state appears in the reply as a whole
  token (numbers in common renderings: 75000, 75000.0, 75,000, 75,000.00, $75,000, 75k;
  ISO dates also as "March 31, 2026" and the like), with `affirmed` likewise.
  reason: the reply gives the reason of failure category `rule` (its lexicon in
  crmbench_contracts.replies, or one of `any_of`), names one of `subject_any` when set,
  and names at most replies.MAX_UNRELATED_REASONS other reasons (else it is not
  specific). judge facts are left to LLM judges.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydantic import ValidationError

from crmbench_contracts.cases import AllowedChange, CommunicationFact, RowRef, StateAssertion
from crmbench_contracts.replies import CATEGORY_REASONS, affirmed_phrase, normalize, read_reason
from crmbench_contracts.rewards import CollateralChange

NUMBER_TOLERANCE = 0.005
OPERATORS = ("$ref", "$icontains", "$in", "$ne", "$null")
_NUMERIC = re.compile(r"^-?\d+(\.\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Unresolvable(Exception):
    """An expectation that cannot be evaluated (a $ref without its unique row, an
    unknown operator or field): the check that holds it fails with this message."""


Row = Mapping[str, Any]


@dataclass(frozen=True)
class FinalState:
    """The tables of the final state, the ground against which $ref resolves."""

    tables: Mapping[str, Sequence[Row]]

    def rows(self, table: str) -> Sequence[Row]:
        return self.tables.get(table, ())


def compact(value: Any) -> str:
    """A value as one short line of JSON, for rationales."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------- values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(value: Any) -> float | None:
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and _NUMERIC.match(value.strip()):
        return float(value)
    return None


def _is_operator(value: Any) -> bool:
    if not isinstance(value, dict) or not value:
        return False
    dollar = [key for key in value if isinstance(key, str) and key.startswith("$")]
    if dollar and len(dollar) != len(value):
        raise Unresolvable(f"{compact(value)} mixes operators and plain fields")
    return bool(dollar)


def equal(expected: Any, actual: Any) -> bool:
    """Plain equality under the verifier's rules (numbers within 0.005, bools apart)."""
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if _is_number(expected):
        number = _as_number(actual)
        return (
            number is not None
            and math.isfinite(number)
            and abs(float(expected) - number) <= NUMBER_TOLERANCE
        )
    if isinstance(expected, str):
        return isinstance(actual, str) and expected == actual
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(equal(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and set(actual) == set(expected)
            and all(equal(expected[k], actual[k]) for k in expected)
        )
    return bool(expected == actual)


@dataclass(frozen=True)
class _Resolved:
    """The value a $ref named, looked up in the final state."""

    value: Any


def prepare(expected: Any, world: FinalState) -> Any:
    """`expected` with every $ref resolved and every operator checked, before any row is
    compared (so a bad $ref fails even when the table is empty); Unresolvable if not."""
    if isinstance(expected, list):
        return [prepare(item, world) for item in expected]
    if not _is_operator(expected):
        return expected
    prepared: dict[str, Any] = {}
    for name, argument in expected.items():
        if name == "$ref":
            prepared[name] = _Resolved(resolve_ref(argument, world))
        elif name == "$icontains":
            if not isinstance(argument, str):
                raise Unresolvable(f"$icontains needs a string, got {compact(argument)}")
            prepared[name] = argument
        elif name == "$in":
            if not isinstance(argument, list):
                raise Unresolvable(f"$in needs a list, got {compact(argument)}")
            prepared[name] = [prepare(option, world) for option in argument]
        elif name == "$ne":
            prepared[name] = prepare(argument, world)
        elif name == "$null":
            if not isinstance(argument, bool):
                raise Unresolvable(f"$null needs true or false, got {compact(argument)}")
            prepared[name] = argument
        else:
            raise Unresolvable(f"unknown operator {name!r} (allowed: {', '.join(OPERATORS)})")
    return prepared


def prepare_where(where: Mapping[str, Any], world: FinalState) -> dict[str, Any]:
    return {field: prepare(expected, world) for field, expected in where.items()}


def value_matches(expected: Any, actual: Any) -> bool:
    """Whether a row's value satisfies a prepared expected value or operator expression."""
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(value_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if not _is_operator(expected):
        return equal(expected, actual)
    for name, argument in expected.items():
        if name == "$ref":
            holds = equal(argument.value, actual)
        elif name == "$icontains":
            holds = isinstance(actual, str) and argument.casefold() in actual.casefold()
        elif name == "$in":
            holds = any(value_matches(option, actual) for option in argument)
        elif name == "$ne":
            holds = not value_matches(argument, actual)
        else:  # $null; prepare() admits no other operator
            holds = (actual is None) == argument
        if not holds:
            return False
    return True


def _check_fields(table: str, rows: Sequence[Row], where: Mapping[str, Any]) -> None:
    """A `where` key the table's rows lack is a defect of the case, not a non-match."""
    if rows:
        for field in where:
            if field not in rows[0]:
                raise Unresolvable(f"the {table} table has no field {field!r}")


def row_matches(row: Row, where: Mapping[str, Any]) -> bool:
    """Whether every prepared `where` value matches the row's field."""
    return all(field in row and value_matches(v, row[field]) for field, v in where.items())


def select(table: str, where: Mapping[str, Any], world: FinalState) -> list[Row]:
    """The rows of `table` in the final state that match `where` (prepared here)."""
    prepared = prepare_where(where, world)
    rows = world.rows(table)
    _check_fields(table, rows, prepared)
    return [row for row in rows if row_matches(row, prepared)]


def resolve_ref(argument: Any, world: FinalState) -> Any:
    """The `field` of the unique row of `table` matching `where` in the final state."""
    if isinstance(argument, RowRef):
        ref = argument
    else:
        try:
            ref = RowRef.model_validate(argument)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem.get("loc", ()))
            raise Unresolvable(
                f"$ref needs {{table, where, field}}: {where + ': ' if where else ''}"
                f"{problem.get('msg')}"
            ) from None
    rows = select(ref.table, ref.where, world)
    if not rows:
        raise Unresolvable(f"$ref: no {ref.table} row matches {compact(ref.where)}")
    if len(rows) > 1:
        raise Unresolvable(
            f"$ref: {len(rows)} {ref.table} rows match {compact(ref.where)}; "
            "it must name exactly one"
        )
    if ref.field not in rows[0]:
        raise Unresolvable(f"$ref: the {ref.table} table has no field {ref.field!r}")
    return rows[0][ref.field]


def _id_field(table: str) -> str:
    return f"{table}_id"


def _excerpt(row: Row, table: str, fields: Sequence[str]) -> dict[str, Any]:
    keys = [_id_field(table), *fields]
    return {key: row[key] for key in dict.fromkeys(keys) if key in row}


def _mismatched(row: Row, where: Mapping[str, Any]) -> list[str]:
    return [f for f, v in where.items() if f not in row or not value_matches(v, row[f])]


def _closest(table: str, where: Mapping[str, Any], world: FinalState) -> tuple[Row, list[str]]:
    """The row that matches most prepared `where` keys (first such in id order), and
    the keys it differs in."""
    best: tuple[Row, list[str]] | None = None
    for row in world.rows(table):
        wrong = _mismatched(row, where)
        if best is None or len(wrong) < len(best[1]):
            best = (row, wrong)
    assert best is not None
    return best


# ---------------------------------------------------------------------------- state


def evaluate_state(assertion: StateAssertion, world: FinalState) -> tuple[bool, Any, str]:
    """(passed, actual, detail) of one state assertion in the final state; Unresolvable
    when it cannot tell (a bad $ref, operator or field: a defect of the case)."""
    table, where = assertion.table, assertion.where
    shown = compact(where)
    rows = select(table, where, world)
    if assertion.kind == "row_exists":
        if rows:
            return True, {"matches": len(rows)}, f"{len(rows)} {table} row(s) match {shown}"
        if not world.rows(table):
            return False, {"matches": 0}, f"no {table} row matches {shown} (the table is empty)"
        row, wrong = _closest(table, prepare_where(where, world), world)
        closest = _excerpt(row, table, list(where))
        return (
            False,
            {"matches": 0, "closest": closest},
            f"no {table} row matches {shown}; the closest, {compact(closest)}, "
            f"differs in {', '.join(wrong)}",
        )
    if assertion.kind == "row_absent":
        if not rows:
            return True, {"matches": 0}, f"no {table} row matches {shown}"
        first = _excerpt(rows[0], table, list(where))
        return (
            False,
            {"matches": len(rows), "first": first},
            f"{len(rows)} {table} row(s) match {shown} and none should, e.g. {compact(first)}",
        )
    if assertion.kind == "count":
        if assertion.count is None:
            raise Unresolvable("a count assertion needs `count`")
        return (
            len(rows) == assertion.count,
            len(rows),
            f"{len(rows)} {table} row(s) match {shown}, expected {assertion.count}",
        )
    # field_equals
    field = assertion.field
    if field is None:
        raise Unresolvable("a field_equals assertion needs `field`")
    if len(rows) != 1:
        return (
            False,
            {"matches": len(rows)},
            f"{len(rows)} {table} rows match {shown}; field_equals needs exactly one",
        )
    if field not in rows[0]:
        raise Unresolvable(f"the {table} table has no field {field!r}")
    actual = rows[0][field]
    passed = value_matches(prepare(assertion.value, world), actual)
    verb = "as expected" if passed else f"expected {compact(assertion.value)}"
    return passed, actual, f"{table}.{field} is {compact(actual)}, {verb}"


def assertion_holds(assertion: StateAssertion, world: FinalState) -> bool:
    """Whether one state assertion passes (one it cannot evaluate does not)."""
    try:
        return evaluate_state(assertion, world)[0]
    except Unresolvable:
        return False


# ---------------------------------------------------------------------------- changes


@dataclass(frozen=True)
class LoggedChange:
    """One change-log entry with the tool call that made it."""

    tool_call_id: str | None
    tool: str | None
    seq: int | None
    table: str
    op: str
    key: str
    before: Row | None
    after: Row | None

    @property
    def row(self) -> Row:
        """The row a rule's `where` is matched against: `before` for DELETE, else `after`."""
        return (self.before if self.op == "DELETE" else self.after) or {}


def changed_fields(before: Row | None, after: Row | None) -> list[str]:
    """The fields whose value differs between two versions of a row."""
    before, after = before or {}, after or {}
    return sorted(
        key
        for key in set(before) | set(after)
        if key not in before or key not in after or before[key] != after[key]
    )


@dataclass(frozen=True)
class _Rule:
    """An allowed-change rule with its `where` prepared against the final state, or the
    reason it cannot be (then it covers nothing)."""

    index: int
    rule: AllowedChange
    where: Mapping[str, Any]
    defect: str | None


def _prepare_rules(rules: Sequence[AllowedChange], world: FinalState) -> list[_Rule]:
    prepared = []
    for index, rule in enumerate(rules):
        try:
            prepared.append(_Rule(index, rule, prepare_where(rule.where, world), None))
        except Unresolvable as exc:
            prepared.append(_Rule(index, rule, {}, str(exc)))
    return prepared


def _rule_problem(rule: _Rule, change: LoggedChange) -> str | None:
    """Why `rule` does not cover `change`, or None when it does (room aside)."""
    if change.op not in rule.rule.ops:
        return f"{change.op} is not among its ops {rule.rule.ops}"
    if rule.defect is not None:
        return rule.defect
    wrong = _mismatched(change.row, rule.where)
    if wrong:
        return f"the row does not match its where {compact(rule.rule.where)} on {', '.join(wrong)}"
    if change.op == "UPDATE" and rule.rule.fields is not None:
        changed = changed_fields(change.before, change.after)
        outside = sorted(set(changed) - set(rule.rule.fields))
        if outside:
            return f"changed {', '.join(outside)}, outside its fields {rule.rule.fields}"
    return None


def find_collateral(
    rules: Sequence[AllowedChange], changes: Sequence[LoggedChange], world: FinalState
) -> list[CollateralChange]:
    """The changes no allowed-change rule takes, in log order, each with the reason."""
    prepared = _prepare_rules(rules, world)
    covered: list[set[str]] = [set() for _ in rules]
    collateral: list[CollateralChange] = []
    for change in changes:
        reasons: list[str] = []
        for rule in prepared:
            if rule.rule.table != change.table:
                continue
            problem = _rule_problem(rule, change)
            if problem is None:
                rows, limit = covered[rule.index], rule.rule.max_rows
                if change.key in rows or limit is None or len(rows) < limit:
                    rows.add(change.key)
                    break
                problem = f"it already covers its max_rows={limit} row(s)"
            reasons.append(f"allowed_changes[{rule.index}]: {problem}")
        else:
            reason = "; ".join(reasons) or f"no allowed change covers the {change.table} table"
            collateral.append(
                CollateralChange(
                    table=change.table,
                    op=change.op,
                    key=change.key,
                    tool_call_id=change.tool_call_id,
                    reason=reason,
                )
            )
    return collateral


# ---------------------------------------------------------------------------- communication

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def normalize_text(text: str) -> str:
    """Case-folded, typographic dashes and quotes made plain, whitespace collapsed
    (crmbench_contracts.replies.normalize, the one reading of a reply's characters)."""
    return normalize(text)


def number_renderings(value: float) -> list[str]:
    """Ways a reply may write a number: 75000, 75,000.00, 75k, 1.5m, 1234.5, ..."""
    magnitude = abs(value)
    forms: set[str] = set()
    whole = round(magnitude)
    if abs(magnitude - whole) < NUMBER_TOLERANCE:
        forms |= {
            f"{whole}",
            f"{whole}.0",
            f"{whole}.00",
            f"{whole:,}",
            f"{whole:,}.0",
            f"{whole:,}.00",
        }
        if whole and whole % 1000 == 0:
            forms |= {f"{whole // 1000:,}k", f"{whole // 1000:,} thousand"}
        if whole >= 1_000_000 and whole % 10_000 == 0:
            millions = f"{whole / 1_000_000:g}"
            forms |= {f"{millions}m", f"{millions} million", f"{millions}mm"}
    else:
        for text in (f"{magnitude:.2f}", f"{magnitude:,.2f}"):
            forms |= {text, text.rstrip("0")}
    return sorted(forms, key=lambda form: (-len(form), form))


def date_renderings(day: date) -> list[str]:
    month = MONTHS[day.month - 1]
    short = month[:3]
    return [
        day.isoformat(),
        f"{month} {day.day}, {day.year}",
        f"{month} {day.day} {day.year}",
        f"{day.day} {month} {day.year}",
        f"{short} {day.day}, {day.year}",
        f"{short} {day.day} {day.year}",
        f"{day.day} {short} {day.year}",
        f"{day.month:02d}/{day.day:02d}/{day.year}",
        f"{day.year}/{day.month:02d}/{day.day:02d}",
    ]


def value_renderings(value: Any) -> list[str]:
    """Every accepted way to write a state value in a reply, longest first."""
    if _is_number(value):
        return number_renderings(float(value))
    text = str(value).strip()
    forms = [text]
    if _NUMERIC.match(text):
        forms += number_renderings(float(text))
    elif _ISO_DATE.match(text):
        with contextlib.suppress(ValueError):  # 2026-02-31 is just text
            forms += date_renderings(date.fromisoformat(text))
    return list(dict.fromkeys(forms))


def find_mention(reply: str, renderings: Sequence[str]) -> str | None:
    """The first rendering that appears in the reply as a whole token (not inside a
    longer word or number: 75000 does not match 175000 or 75000.50)."""
    text = normalize_text(reply)
    for rendering in renderings:
        needle = normalize_text(rendering)
        if not needle:
            continue
        head = r"(?<!\w)(?<!\d[.,])" if needle[0].isalnum() else ""
        tail = r"(?!\w)(?![.,]\d)" if needle[-1].isalnum() else ""
        if re.search(head + re.escape(needle) + tail, text):
            return rendering
    return None


def mention_phrases(fact: CommunicationFact) -> list[str]:
    """The phrases of a mentions fact that can be looked for (blank ones cannot);
    Unresolvable when none is left."""
    phrases = [phrase for phrase in fact.any_of if phrase.strip()]
    if not phrases:
        raise Unresolvable("a mentions fact needs at least one phrase in any_of")
    return phrases


def find_phrase(reply: str, phrases: Sequence[str]) -> str | None:
    """The first phrase the reply contains, both normalized (normalize_text); a plain
    substring search, unlike find_mention's whole tokens."""
    text = normalize_text(reply)
    return next((p for p in phrases if normalize_text(p) in text), None)


def fact_value(fact: CommunicationFact, world: FinalState) -> Any:
    """The state value a mentions_value fact asks for; Unresolvable without `ref`, when
    the ref has no unique row, or when the value is empty."""
    if fact.ref is None:
        raise Unresolvable("a mentions_value fact needs `ref`")
    value = resolve_ref(fact.ref, world)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Unresolvable(f"{fact.ref.table}.{fact.ref.field} is empty in the state")
    return value


@dataclass(frozen=True)
class FactReading:
    """What the reply says toward one fact: `found` is the text that satisfies it (None
    when nothing does), `expected` what was looked for, `detail` one line for a rationale."""

    found: str | None
    expected: Any
    detail: str


def _affirmed_mention(reply: str, renderings: Sequence[str]) -> str | None:
    """find_mention restricted to clauses that do not negate the rendering."""
    found = find_mention(reply, renderings)
    if found is None:
        return None
    return affirmed_phrase(reply, [r for r in renderings if find_mention(reply, [r])])


def read_fact(fact: CommunicationFact, reply: str, world: FinalState) -> FactReading:
    """How the reply stands toward a mentions, mentions_value or reason fact (rules in the
    module docstring). Unresolvable for a defective fact (no phrase, no unique row, an
    unknown rule); ValueError for a judge fact, which only the LLM judges can score."""
    if fact.kind == "mentions":
        phrases = mention_phrases(fact)
        if fact.affirmed:
            found = affirmed_phrase(reply, phrases)
            missing = f"the reply affirms none of {compact(phrases)}"
        else:
            found = find_phrase(reply, phrases)
            missing = f"the reply mentions none of {compact(phrases)}"
        shown = f"the reply mentions {found!r}" if found is not None else missing
        return FactReading(found, fact.any_of, shown)
    if fact.kind == "mentions_value":
        value = fact_value(fact, world)
        renderings = value_renderings(value)
        found = (
            _affirmed_mention(reply, renderings)
            if fact.affirmed
            else find_mention(reply, renderings)
        )
        expected = {"ref": fact.ref.model_dump() if fact.ref else None, "value": value}
        shown = (
            f"the reply gives {found!r}"
            if found is not None
            else f"the reply does not {'affirm' if fact.affirmed else 'give'} {compact(value)}"
        )
        return FactReading(found, expected, shown)
    if fact.kind == "reason":
        if fact.rule is None or fact.rule not in CATEGORY_REASONS:
            raise Unresolvable(
                f"a reason fact needs a known `rule` (a failure category), got {fact.rule!r}"
            )
        reading = read_reason(reply, fact.rule, fact.any_of)
        expected = {"rule": fact.rule, "subject_any": fact.subject_any}
        if reading.given is None:
            return FactReading(None, expected, f"the reply does not give the {fact.rule} reason")
        if not reading.specific:
            return FactReading(
                None,
                expected,
                f"the reply names {len(reading.unrelated)} unrelated reasons "
                f"({', '.join(reading.unrelated)}): not specific, so the reason is not earned",
            )
        if fact.subject_any:
            subject = find_mention(reply, fact.subject_any) or find_phrase(reply, fact.subject_any)
            if subject is None:
                return FactReading(
                    None,
                    expected,
                    f"the reply gives a reason ({reading.given!r}) but names none of "
                    f"{compact(fact.subject_any)}",
                )
        return FactReading(
            reading.given, expected, f"the reply gives the reason: {reading.given!r}"
        )
    raise ValueError(f"a {fact.kind} fact is scored by the LLM judges, not by matching")


def fact_found(fact: CommunicationFact, reply: str, world: FinalState) -> str | None:
    """What the reply says that satisfies a mentions, mentions_value or reason fact, None
    when it says nothing that does (read_fact has the rules and the errors)."""
    return read_fact(fact, reply, world).found
