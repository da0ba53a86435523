"""The offline reader of a final reply: which outcome it claims, which rules' reasons it
gives, and whether a phrase is affirmed or negated. Pure functions, no I/O.

It is the verifier's `offline` verification mode (crmbench_contracts.rewards): with LLM
judges configured the judges read the reply by meaning instead. What it can tell and what
it cannot is written down in the README ("How a reply is read: offline mode and judges").

Clauses
  A reply is split into sentences (at ". ", "! ", "? " and new lines), sentences into
  clauses at ";", ": ", " - " and the joints "but", "so", "however", "although", "though",
  "because", "whereas", "yet". A clause is
  negated when it holds a negation cue (not, n't, no, never, nothing, unable, failed,
  instead of, without, ...).

Claimed outcome (`classify_outcome`)
  - a completion claim: a clause that is not negated and says work was done ("Done",
    "all set", "I've created", "has been updated", "X is now Y", a sentence opening with
    "Created"/"Updated"/... as its verb, not as an adjective: "Closed deals are locked"
    claims nothing);
  - a refusal: a negated clause about doing ("I can't", "I didn't change", "left it as
    it was"), or a rule stated as a limit ("must be", "has to be", "only accepts", "is
    not a valid", "already exists");
  - an approval need: a manager, approval, sign-off or authorisation is named;
  - a question: a clause ending in "?" or asking ("let me know", "please confirm").
  The outcome is `completed` when the reply claims completion (a partial refusal beside a
  completion claim, "Created X; there is no vip field", is still a completion), else
  `needs_approval` when it names one, else `needs_clarification` when it asks, else
  `refused` when it refuses; a reply with none of these (a plain report of what was
  found, "no client matches") is `completed`.

Reasons (`reasons_named`)
  REASONS maps a reason (one rule of domain.md, several failure categories may share
  one) to the patterns that state it in plain words: "0% to 100%", "between 0 and 100",
  "caps deals at $10M", "aren't permitted". CATEGORY_REASONS maps each failure category
  to its reasons. A reply that names more than MAX_UNRELATED_REASONS reasons besides the
  ones of the fact's rule is not specific (a reply stuffed with every rule's reason) and
  earns no reason fact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from crmbench_contracts.cases import Outcome

MAX_UNRELATED_REASONS = 2
"""Reasons beyond the fact's own a reply may name and still be specific: a careful reply
names its rule and perhaps a related one or two; a stuffed reply names a dozen."""

_QUOTES = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
    }
)


def normalize(text: str) -> str:
    """Case-folded, typographic dashes and quotes made plain, whitespace collapsed."""
    return " ".join(text.translate(_QUOTES).split()).casefold()


# ---------------------------------------------------------------------------- clauses

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE_END = re.compile(r";+\s*|:\s+|\s+-\s+")
_JOINT = re.compile(
    r",?\s+\b(?:but|so|however|although|though|because|whereas|yet)\b\s+"
    r"|,\s+(?:and\s+)?(?=i\b|i'|it\b|that\b|this\b)"
)
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nothing|cannot|unable|failed|without|instead)\b"
    r"|n't\b|\bno longer\b|\bcan not\b"
)


@dataclass(frozen=True)
class Clause:
    text: str
    negated: bool
    question: bool
    opens_sentence: bool


def clauses(reply: str) -> list[Clause]:
    """The reply's clauses, normalized (module docstring), each with whether it is negated,
    whether its sentence asks, and whether it opens its sentence."""
    return list(_clauses(reply))


@lru_cache(maxsize=256)
def _clauses(reply: str) -> tuple[Clause, ...]:
    out: list[Clause] = []
    for sentence in _SENTENCE_END.split(normalize(reply)):
        sentence = sentence.strip()
        if not sentence:
            continue
        asks = sentence.endswith("?")
        first = True
        for piece in _CLAUSE_END.split(sentence):
            for part in _JOINT.split(piece):
                part = part.strip(" ,")
                if part:
                    out.append(Clause(part, bool(_NEGATION.search(part)), asks, first))
                    first = False
    return tuple(out)


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    needle = normalize(phrase)
    head = r"(?<!\w)" if needle[:1].isalnum() else ""
    tail = r"(?!\w)" if needle[-1:].isalnum() else ""
    return re.compile(head + re.escape(needle) + tail)


def affirmed_phrase(reply: str, phrases: Sequence[str]) -> str | None:
    """The first phrase that appears, as a whole word, in a clause of the reply that does
    not negate it; None when every mention is negated or there is none."""
    parts = [c.text for c in clauses(reply) if not c.negated]
    for phrase in phrases:
        if not phrase.strip():
            continue
        pattern = _phrase_pattern(phrase)
        if any(pattern.search(part) for part in parts):
            return phrase
    return None


# ---------------------------------------------------------------------------- outcome

_DONE_VERBS = (
    r"created|added|updated|set|moved|changed|attached|uploaded|logged|saved|sent|approved|"
    r"closed|deleted|removed|renamed|marked|pushed|bumped|recorded|entered|linked|drafted|"
    r"cloned|cancell?ed|made|put|applied|filed|edited|modified|stored|converted|adjusted|"
    r"rounded|registered|reassigned|assigned|extended|completed|finished|submitted|generated"
)
_COMPLETION = re.compile(
    r"^(?:ok(?:ay)?[,!]?\s+)?(?:done|all set|all done|finished|complete|success)\b"
    r"|\b(?:all set|all done|taken care of|went through|successfully|is done|are done)\b"
    rf"|\b(?:i|i've|i have|we|we've|we have|i just|i also)\s+(?:just\s+|now\s+|also\s+|went ahead and\s+)?(?:{_DONE_VERBS})\b"
    rf"|\b(?:has|have|had)\s+been\s+(?:{_DONE_VERBS})\b"
    rf"|\b(?:was|were)\s+(?:successfully\s+|just\s+)?(?:{_DONE_VERBS})\b"
    r"|\b(?:is|are)\s+now\b|\bnow\s+(?:shows?|reads?|sits?|has|says)\b"
)
_OPENING_CLAIM = re.compile(
    rf"^(?:{_DONE_VERBS})\b"
    # "Closed deals are locked": the participle is an adjective of a subject, no claim
    r"(?!(?:-\w+)?\s+(?:[\w'-]+\s+)?(?:are|is|must|can|cannot|can't|should|need|needs|have|has|may)\b)"
)
_REFUSAL = re.compile(
    r"\b(?:can't|cannot|can not|can only|couldn't|could not|won't|unable|not able|not allowed|"
    r"not permitted|not possible|impossible|rejected|refused|declined|didn't|did not|"
    r"haven't|have not|hasn't|has not|wasn't|was not|left it|left them|left the|left as|"
    r"kept (?:it|the|them)|left .{1,60} (?:in|at|where|as|alone|unchanged)|no changes?|nothing (?:was|has been|is) changed|unchanged|"
    r"as it (?:was|is)|must be|has to be|have to be|needs to be|need to be|only (?:accepts|takes|allows)|"
    r"(?:isn't|is not|not) (?:a )?valid|invalid|already exists?|doesn't exist|does not exist|"
    r"no such|blocked|not supported|isn't supported|not accepted|isn't accepted)\b"
)
_APPROVAL = re.compile(
    r"\b(?:manager(?:'s)?|managers|approval|approve it|sign-?off|sign off|authori[sz](?:e|ed|ation)|"
    r"escalat\w*|permission)\b"
)
_ASKING = re.compile(
    r"\b(?:let me know|please confirm|can you confirm|could you confirm|please (?:tell|send|share|give|provide)|"
    r"could you|can you|would you like|do you want|should i|which (?:one|stage|deal|value)|what (?:should|value|name|type))\b"
)


_EMPTY_RESULT = re.compile(
    r"\b(?:no (?:matching|matches|match|results?|records?|rows?|hits)|nothing (?:matches|matched|found)|"
    r"none (?:found|match|matched)|found no(?:thing)?|there (?:are|is|were|was) no|no \w+ (?:match|matches|matched|found))\b"
)
"""A search that found nothing: an answer (completed), not a refusal."""


@dataclass(frozen=True)
class OutcomeReading:
    """What the offline classifier read: the outcome and the clauses that decided it."""

    outcome: Outcome
    evidence: list[str]


def classify_outcome(reply: str) -> OutcomeReading:
    """The outcome `reply` claims, by the rules of the module docstring."""
    parts = clauses(reply)
    done = [
        c.text
        for c in parts
        if not c.negated
        and not c.question
        and (_COMPLETION.search(c.text) or (c.opens_sentence and _OPENING_CLAIM.search(c.text)))
    ]
    if done:
        return OutcomeReading(Outcome.COMPLETED, done)
    approval = [c.text for c in parts if _APPROVAL.search(c.text)]
    if approval:
        return OutcomeReading(Outcome.NEEDS_APPROVAL, approval)
    asks = [c.text for c in parts if c.question or _ASKING.search(c.text)]
    if asks:
        return OutcomeReading(Outcome.NEEDS_CLARIFICATION, asks)
    refused = [
        c.text
        for c in parts
        if (_REFUSAL.search(c.text) or c.negated) and not _EMPTY_RESULT.search(c.text)
    ]
    if refused:
        return OutcomeReading(Outcome.REFUSED, refused)
    return OutcomeReading(Outcome.COMPLETED, [])


# ---------------------------------------------------------------------------- reasons

_CANT = r"(?:can't|cannot|can not|mustn't|must not|may not|shouldn't|couldn't|won't|isn't allowed to|is not allowed to)"
_TEN_MILLION = r"(?:\$\s?)?(?:10,000,000|10000000|10\s?(?:m|mm|mil|million)\b|ten million)"

REASONS: dict[str, tuple[str, ...]] = {
    "stage_value": (
        r"not (?:a |one of the )?(?:valid|recogni[sz]ed|known|real|allowed|available|supported) stages?",
        r"(?:isn't|is not|not) (?:a |one of the )?(?:valid|recogni[sz]ed|real|known|available) (?:stage|option|value|choice)\b",
        r"valid stages",
        r"\bno ['\"]?[\w -]{1,20}['\"]? stages?\b",
        r"there(?:'s| is) no .{0,20}\bstage",
        r"no (?:such )?stage",
        r"(?:stage|that) (?:doesn't|does not) exist",
        r"prospecting, qualification",
        r"stages? (?:are|is|available)",
        r"(?:don't|doesn't|do not|does not) have (?:a|an|that) .{0,20}stage",
    ),
    "required_amount": (
        r"(?:need|needs|required|require|requires|missing|without|no) (?:an? |the )?(?:deal )?(?:amount|value)",
        r"\bamount\b.{0,30}\b(?:required|missing|needed|mandatory)",
        r"how much",
        r"what(?:'s| is) (?:the |it )?(?:deal )?(?:worth|value|amount)",
        r"deal value",
        r"(?:amount|value) (?:is|was) (?:not given|missing)",
    ),
    "no_such_field": (
        r"no ['\"]?[\w ]{1,20}['\"]? (?:field|attribute|property|column)",
        r"(?:isn't|is not|not) an? (?:valid |supported |known |real |standard |recogni[sz]ed )?(?:field|attribute|property|column)",
        r"(?:doesn't|does not|don't|do not) (?:have|support|track|store|keep|offer) (?:a|an|that|such|any|this)",
        r"no (?:such|place|field|slot)",
        r"not (?:been )?(?:stored|saved|supported|recorded|kept|set)",
        rf"{_CANT} (?:be )?(?:store|save|set|record|add|keep|track)",
        r"(?:field|attribute|property) (?:doesn't|does not) exist",
        r"unsupported field",
        r"not (?:a )?part of",
        r"(?:wasn't|was not|weren't) (?:stored|saved|set|kept|added)",
    ),
    "positive_amount": (
        r"\bnegative\b",
        r"below (?:zero|0|\$0)",
        r"less than (?:zero|0|\$0)",
        r"under (?:zero|\$0)",
        r"(?:must|has to|needs to|should) be (?:positive|above|more than|greater than|over)",
        r"(?:greater|more|higher|bigger) than (?:zero|0|\$0)\b",
        r"above (?:zero|\$0)",
        r"\bpositive\b",
        r"\bminus\b",
    ),
    "zero_amount": (
        r"\bzero\b",
        r"\$0\b",
        r"worth nothing",
        r"\bnon-?zero\b",
        r"(?:of|be|is|to) 0\b(?!\s?%)(?! and)(?! to)",
        r"(?:greater|more|higher|bigger) than (?:zero|0|\$0)\b",
        r"above (?:zero|\$0)",
        r"(?:empty|no) amount",
    ),
    "max_amount": (
        _TEN_MILLION,
        r"\bmaximum\b",
        r"\bmax\b",
        r"\bcaps?\b",
        r"\bcapped\b",
        r"\blimit\b",
        r"too (?:large|high|big|much)",
        r"\bexceeds?\b",
        r"over the (?:limit|max)",
        r"upper (?:bound|limit)",
        r"(?:at most|no more than|up to) (?:\$\s?)?10",
    ),
    "probability_range": (
        r"(?:between|from) 0\s?%?\s?(?:and|to|-|through) 100",
        r"\b0\s?%?\s?(?:-|to|through)\s?100\s?%?",
        rf"{_CANT} (?:be |go )?(?:exceed|above|over|beyond|past|more than|greater than|higher than|bigger than) 100",
        r"(?:above|over|more than|greater than|higher than|beyond|exceed\w*) 100\s?%?",
        rf"{_CANT} (?:be )?(?:negative|below 0|less than 0|under 0|below zero)",
        r"out of range",
        r"valid range",
        r"(?:at most|max(?:imum)?(?: is)?|no more than|no higher than|tops out at|caps at) 100",
        r"\bpercentage\b.{0,30}\b100\b",
        r"\bnegative\b",
    ),
    "whole_probability": (
        r"whole (?:number|percent|percentage|value)s?",
        r"\bintegers?\b",
        r"\bround(?:ed|ing)?\b",
        r"\bdecimals?\b",
        r"\bfractions?\b",
        r"no decimal",
        r"fractional",
    ),
    "past_date": (
        r"in the past",
        r"already (?:passed|gone|happened|over|behind)",
        r"before today",
        r"earlier than today",
        r"has (?:already )?passed",
        r"(?:is|'s) (?:already )?past\b",
        r"today or later",
        r"(?:must|has to|needs to) be (?:today|in the future|a future)",
        r"\bfuture\b",
        r"gone by",
        r"\bexpired\b",
        r"prior to today",
        r"before the current date",
    ),
    "date_format": (r"yyyy-mm-dd", r"date format", r"\biso\b", r"\bformat of (?:the )?date"),
    "already_exists": (
        r"already (?:exists?|in|on file|there|have|has|registered|listed|a client|set up|recorded)",
        r"\bexisting\b",
        r"\bduplicates?\b",
    ),
    "other_client": (
        r"belongs? to",
        r"(?:different|another|other|wrong) (?:client|account|customer|company)",
        r"(?:doesn't|does not|don't) belong",
        r"someone else's",
        r"\bmismatch",
        r"(?:is|'s) (?:for|under|owned by|linked to|tied to|with|on) .{1,40}(?:not|rather than|instead of)",
        r"not (?:for|linked to|associated with|tied to|under|owned by)",
    ),
    "blank_name": (
        r"\bblank\b",
        r"\bempty\b",
        r"(?:only|just) (?:spaces|whitespace|blanks)",
        r"\bwhitespace\b",
        r"(?:needs|must have|requires|has to have) (?:a|an actual|a real|some) (?:name|value)",
        r"name (?:can't|cannot|can not|must not) be",
        r"no (?:actual )?name",
    ),
    "email_format": (
        r"(?:not a |isn't a |is not a )?\binvalid (?:e-?mail|address)",
        r"not a valid (?:e-?mail|address)",
        r"(?:e-?mail|address) .{0,40}(?:invalid|malformed|broken|wrong|incorrect|not valid|isn't valid|typo|doesn't look|does not look)",
        r"(?:malformed|broken|incorrect|wrong|bad|mistyped) (?:e-?mail|address)",
        r"(?:doesn't|does not|don't) look (?:right|valid|correct)",
        r"valid (?:e-?mail|address)",
    ),
    "unsafe_name": (
        r"\bpaths?\b",
        r"\bunsafe\b",
        r"not safe",
        r"(?:folder|directory|directories)",
        r"\btraversal\b",
        r"plain file ?name",
        r"\bslash(?:es)?\b",
    ),
    "file_type": (
        r"not (?:a )?(?:supported|accepted|allowed|permitted) (?:file )?(?:type|format|extension|kind)",
        r"(?:file )?(?:type|format|extension|kind of file)s? .{0,30}(?:not|isn't|aren't|n't) (?:supported|accepted|allowed|permitted)",
        r"\bexecutables?\b",
        rf"{_CANT} be (?:uploaded|attached)",
        r"(?:kind|type) of file",
        r"not supported",
        r"not accepted",
        r"(?:isn't|aren't|is not|are not) (?:supported|accepted)",
        r"\bblocked\b",
    ),
    "missing_extension": (
        r"\bextensions?\b",
        r"file ?type",
        r"what (?:kind|type|format) of file",
        r"\bsuffix\b",
        r"\.(?:pdf|docx?)\b",
        r"file format",
    ),
    "closed_deal": (
        r"(?:already |is |'s |been |was )closed\b",
        r"closed-?(?:won|lost)",
        r"closed (?:deals?|opportunit\w+)",
        r"\blocked\b",
        r"\breopen",
        r"\b(?:won|lost) (?:deals?|opportunit\w+)",
        r"no longer open",
    ),
    "won_needs_quote": (
        r"approved quote",
        r"\bnegotiation\b",
        r"quote (?:has to|must|needs to) be approved",
        r"(?:needs|requires|without|no) (?:an? )?(?:approved )?quote",
        r"skip (?:stages|ahead)",
    ),
    "permission": (
        r"\bmanagers?\b",
        r"\bpermissions?\b",
        r"not (?:permitted|authori[sz]ed)",
        r"(?:aren't|are not|isn't|is not|am not) (?:permitted|authori[sz]ed)",
        r"\bapproval\b",
        r"sign-?off",
        r"\bauthori[sz]",
        r"\brights\b",
        r"\baccess\b",
        r"\b20\s?%",
    ),
}
"""Reason -> patterns (regular expressions over the normalized reply) that state it."""

CATEGORY_REASONS: dict[str, tuple[str, ...]] = {
    "INVALID_ENUM": ("stage_value", "won_needs_quote"),
    "ENUM_CASE_MISMATCH": ("stage_value",),
    "ENUM_WHITESPACE": ("stage_value",),
    "MISSING_REQUIRED_FIELD": ("required_amount",),
    "EXTRA_FIELD": ("no_such_field",),
    "TYPE_MISMATCH": ("required_amount",),
    "NEGATIVE_AMOUNT": ("positive_amount", "zero_amount"),
    "ZERO_AMOUNT": ("zero_amount", "positive_amount"),
    "AMOUNT_EXCEEDS_MAX": ("max_amount",),
    "PROBABILITY_OUT_OF_RANGE": ("probability_range",),
    "PROBABILITY_DECIMAL": ("whole_probability",),
    "PAST_DATE": ("past_date",),
    "INVALID_DATE_FORMAT": ("date_format", "past_date"),
    "UNKNOWN_FOREIGN_KEY": ("already_exists",),
    "DUPLICATE_UNIQUE_FIELD": ("already_exists",),
    "CROSS_ENTITY_MISMATCH": ("other_client",),
    "BLANK_STRING": ("blank_name",),
    "MALFORMED_EMAIL": ("email_format",),
    "UNSAFE_FILENAME": ("unsafe_name",),
    "UNSUPPORTED_FILE_EXTENSION": ("file_type",),
    "MISSING_FILE_EXTENSION": ("missing_extension", "file_type"),
    "MODIFY_CLOSED_OPPORTUNITY": ("closed_deal",),
    "INVALID_STAGE_TRANSITION": ("won_needs_quote", "closed_deal"),
    "UNKNOWN_FIELD_UPDATE": ("no_such_field",),
    "PERMISSION_DENIED": ("permission",),
}
"""Failure category (crmbench_contracts.cases.FAILURE_CATEGORIES) -> its reasons, the
first being the rule itself, the rest closely related ones a careful reply may name."""

_COMPILED: dict[str, list[re.Pattern[str]]] = {
    reason: [re.compile(p) for p in patterns] for reason, patterns in REASONS.items()
}


def reason_evidence(reply: str, reason: str) -> str | None:
    """The text that states `reason` in the reply, or None; KeyError for an unknown reason."""
    text = normalize(reply)
    for pattern in _COMPILED[reason]:
        match = pattern.search(text)
        if match:
            return match.group(0)
    return None


def reasons_named(reply: str) -> dict[str, str]:
    """Every reason the reply states -> the text that states it."""
    return dict(_reasons_named(reply))


@lru_cache(maxsize=256)
def _reasons_named(reply: str) -> tuple[tuple[str, str], ...]:
    # A verification reads one reply for every reason fact of every branch: read it once.
    found: list[tuple[str, str]] = []
    for reason in REASONS:
        evidence = reason_evidence(reply, reason)
        if evidence is not None:
            found.append((reason, evidence))
    return tuple(found)


@dataclass(frozen=True)
class ReasonReading:
    """Whether a reply gives a rule's reason, specifically."""

    given: str | None
    """The text that states the rule's reason (or one of the fact's phrases), or None."""
    unrelated: list[str]
    """The other reasons the reply names."""

    @property
    def specific(self) -> bool:
        return len(self.unrelated) <= MAX_UNRELATED_REASONS

    @property
    def earned(self) -> bool:
        return self.given is not None and self.specific


def read_reason(reply: str, rule: str, extra_phrases: Iterable[str] = ()) -> ReasonReading:
    """Whether `reply` gives the reason of failure category `rule` (its REASONS, or one of
    `extra_phrases` as a whole word), and which unrelated reasons it names besides.
    KeyError for a category CATEGORY_REASONS does not know."""
    own = CATEGORY_REASONS[rule]
    named = reasons_named(reply)
    given = next((named[r] for r in own if r in named), None)
    if given is None:
        text = normalize(reply)
        given = next(
            (p for p in extra_phrases if p.strip() and _phrase_pattern(p).search(text)), None
        )
    unrelated = sorted(r for r in named if r not in own)
    return ReasonReading(given, unrelated)


RULE_STATEMENTS: dict[str, str] = {
    "INVALID_ENUM": "'Won' is not a valid stage",
    "MISSING_REQUIRED_FIELD": "the deal amount is required",
    "EXTRA_FIELD": "there is no such field",
    "NEGATIVE_AMOUNT": "amounts must be positive and greater than zero",
    "AMOUNT_EXCEEDS_MAX": "amounts have a maximum of $10,000,000",
    "PROBABILITY_OUT_OF_RANGE": "probability must be between 0 and 100",
    "PROBABILITY_DECIMAL": "probability must be a whole number",
    "PAST_DATE": "the date is in the past",
    "INVALID_DATE_FORMAT": "dates must use the YYYY-MM-DD format",
    "DUPLICATE_UNIQUE_FIELD": "the client already exists",
    "CROSS_ENTITY_MISMATCH": "the deal belongs to another client",
    "BLANK_STRING": "a name cannot be blank",
    "MALFORMED_EMAIL": "that is not a valid email address",
    "UNSAFE_FILENAME": "the file name contains a path",
    "UNSUPPORTED_FILE_EXTENSION": "that file type is not supported",
    "MISSING_FILE_EXTENSION": "the file has no extension",
    "MODIFY_CLOSED_OPPORTUNITY": "closed deals are locked",
    "INVALID_STAGE_TRANSITION": "Closed-Won needs an approved quote in Negotiation",
    "PERMISSION_DENIED": "a manager's permission is required",
}
"""One plain statement per rule, for adversarial replies; together they name every
reason in REASONS (a test keeps it so)."""


def form_reply(rules: Iterable[str]) -> str:
    """A fixed refusal stating the given rules (failure categories of RULE_STATEMENTS),
    with no word about the request itself: "I can't do that. <statement>; <statement>."
    KeyError for a category without a statement."""
    return "I can't do that. " + "; ".join(RULE_STATEMENTS[rule] for rule in rules) + "."


def stuffed_reply() -> str:
    """A reply that names, once each, the reason of every rule in REASONS: the adversary
    that must not earn a reason fact (cases.md: "a fixed reply that lists every rule's
    reason ... scores below the threshold on every case")."""
    return form_reply(RULE_STATEMENTS)
