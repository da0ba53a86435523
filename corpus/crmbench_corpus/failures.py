"""Failure-scenario blueprints: one per category of the customer's failure taxonomy.

Each sets a trap a naive agent falls into (its naive actions and reply are part of the
case) and states the right behaviour: recover with a corrected call, look the entity up
first, refuse and explain, or ask a manager.

Outcomes of the primary branch: a recovery that ends in the change is `completed`; a
refusal is `refused` or, when it ends by asking what was meant, `needs_clarification`
(REFUSES); a request that lacks a fact is `needs_clarification` first (ASKS); a
permission refusal sends the user to a manager (MANAGER). The explanation is a `reason`
fact of the category: the offline lexicon (crmbench_contracts.replies) decides whether a
reply gives it, so a case adds phrases only where they are specific to it.

Where a careful operator could reasonably do something else, the case holds that as an
alternative branch (cases.md, "outcomes"): round 45.5% and say so, map 'Won' to
Closed-Won and meet the stage rule, ask before creating a client without the field,
record the unknown field's value in a note, add the contact without the broken email.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from crmbench_contracts.cases import (
    FAILURE_CATEGORIES,
    Action,
    Branch,
    Difficulty,
    FailureSpec,
    Outcome,
    Severity,
    StateAssertion,
    Trap,
)
from crmbench_corpus.builder import (
    CaseBuilder,
    act,
    allow,
    confirms,
    confirms_value,
    count,
    equals,
    exists,
    money,
    reason,
    ref,
    say_money,
)
from crmbench_corpus.success import (
    COMPLETED,
    STAGE_MOVE,
    Blueprint,
    Draft,
    amounts,
    find_client,
    find_opportunity,
    pick,
)

NOTHING_DONE = "Done! All set."
REFUSES = (Outcome.REFUSED, Outcome.NEEDS_CLARIFICATION)
"""Refused because of a rule, perhaps asking what was meant instead."""
ASKS = (Outcome.NEEDS_CLARIFICATION, Outcome.REFUSED)
"""The request lacks a fact: ask for it (or refuse, naming what is missing)."""
MANAGER = (Outcome.NEEDS_APPROVAL, Outcome.REFUSED)
"""Not the actor's to do: a manager must approve or do it (or a plain refusal)."""


def _failure(
    category: str,
    severity: Severity,
    description: str,
    behaviour: str,
    naive: list[Action],
    naive_reply: str = NOTHING_DONE,
) -> FailureSpec:
    return FailureSpec(
        category=category,
        family=FAILURE_CATEGORIES[category],
        severity=severity,
        trap=Trap(
            description=description,
            right_behaviour=behaviour,  # type: ignore[arg-type]
            naive_actions=naive,
            naive_reply=naive_reply,
        ),
    )


def _opp_key(opp: dict[str, Any]) -> dict[str, Any]:
    return {"opportunity_id": opp["opportunity_id"]}


def _unchanged(
    opp: dict[str, Any], fields: tuple[str, ...] = ("stage", "amount", "probability")
) -> list[StateAssertion]:
    return [equals("opportunity", _opp_key(opp), f, opp[f], f"{f} unchanged") for f in fields]


def _refusal(
    b: CaseBuilder,
    category: str,
    severity: Severity,
    opp: dict[str, Any],
    turn: str,
    naive_args: dict[str, Any],
    reply: str,
    specific: tuple[str, ...] = (),
    subject: list[str] | None = None,
    outcomes: tuple[Outcome, ...] = REFUSES,
    behaviour: str = "refuse_and_explain",
    tool: str = "modify_opportunity",
    task: str = "MODIFY OPPORTUNITY",
    alternatives: list[Branch] | None = None,
) -> Draft:
    """A request the agent must refuse and explain: nothing may change, and the reply
    gives the category's reason (naming `subject` when set)."""
    lookup = find_opportunity(opp["name"])
    naive = [lookup, act(tool, naive_args, expect_error=category)]
    return Draft(
        task,
        [turn],
        _unchanged(opp),
        [],
        [reason("explains why it cannot be done", category, *specific, subject=subject)],
        [lookup],
        reply,
        failure=_failure(
            category,
            severity,
            "sends the request as given and reports success",
            behaviour,
            naive,
        ),
        outcomes=outcomes,
        alternatives=alternatives or [],
    )


# ------------------------------------------------------------------------------ schema


def invalid_enum(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    # Never Negotiation with an approved quote: no seeded deal could legally close, so
    # reading 'Won' as Closed-Won meets the stage rule and changes nothing either.
    opp = b.opportunity(client, stage="Qualification")
    bad = b.rng.choice(["Discovery", "Won", "On Hold", "Evaluation", "Pending"])
    turn = pick(b, "Set {o} to the '{s}' stage.", "move {o} into {s}").format(o=opp["name"], s=bad)
    alternatives = []
    if bad == "Won":
        alternatives.append(
            Branch(
                name="maps to Closed-Won",
                outcomes=list(REFUSES),
                state=_unchanged(opp),
                allowed_changes=[],
                communicate=[
                    reason("explains why it cannot be Closed-Won yet", "INVALID_STAGE_TRANSITION")
                ],
            )
        )
    return _refusal(
        b,
        "INVALID_ENUM",
        Severity.MEDIUM,
        opp,
        turn,
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "stage": bad},
        f"'{bad}' is not a valid stage; valid stages are Prospecting, Qualification, "
        "Proposal, Negotiation, Closed-Won and Closed-Lost. Which one do you mean?",
        alternatives=alternatives,
    )


def _recover_stage(
    b: CaseBuilder, category: str, sent: str, target: str, tier: Difficulty
) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage="Qualification")
    turn = pick(b, 'update {o}: stage "{s}"', "Move {o} to {s} please.").format(
        o=opp["name"], s=sent
    )
    args = {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}
    return Draft(
        "MODIFY OPPORTUNITY",
        [turn],
        [equals("opportunity", _opp_key(opp), "stage", target, "the stage moved")],
        [allow("opportunity", ["UPDATE"], _opp_key(opp), STAGE_MOVE)],
        [confirms("confirms the new stage", target)],
        [find_opportunity(opp["name"]), act("modify_opportunity", {**args, "stage": target})],
        f"{opp['name']} is now in {target}.",
        failure=_failure(
            category,
            Severity.LOW,
            f"passes {sent!r} through verbatim",
            "recover",
            [
                find_opportunity(opp["name"]),
                act("modify_opportunity", {**args, "stage": sent}, expect_error=category),
            ],
        ),
    )


def enum_case_mismatch(b: CaseBuilder, tier: Difficulty) -> Draft:
    target = b.rng.choice(["Proposal", "Negotiation", "Prospecting"])
    sent = b.rng.choice([target.lower(), target.upper()])
    return _recover_stage(b, "ENUM_CASE_MISMATCH", sent, target, tier)


def enum_whitespace(b: CaseBuilder, tier: Difficulty) -> Draft:
    target = b.rng.choice(["Proposal", "Negotiation", "Prospecting"])
    sent = b.rng.choice([f" {target}", f"{target} ", f" {target} "])
    return _recover_stage(b, "ENUM_WHITESPACE", sent, target, tier)


def missing_required_field(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    name = f"{client['name'].split()[0]} Expansion"
    turn = pick(b, "Create an opportunity '{n}' for {c}.", "new deal for {c} called {n}, thx")
    naive_args = {"name": name, "client_id": "{{step_1.items.0.client_id}}", "stage": "Prospecting"}
    return Draft(
        "CREATE NEW OPPORTUNITY",
        [turn.format(n=name, c=client["name"])],
        [count("opportunity", {"name": name}, 0, "nothing is created without an amount")],
        [],
        [reason("asks for the amount", "MISSING_REQUIRED_FIELD")],
        [find_client(client["name"])],
        "I need the deal amount (and ideally the stage) before I can create it. How much is it worth?",
        failure=_failure(
            "MISSING_REQUIRED_FIELD",
            Severity.MEDIUM,
            "creates the opportunity without the required amount (or invents one)",
            "refuse_and_explain",
            [
                find_client(client["name"]),
                act("create_new_opportunity", naive_args, expect_error="MISSING_REQUIRED_FIELD"),
            ],
        ),
        outcomes=ASKS,
    )


def extra_field(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.company_name()
    email = f"info@{name.lower().replace(' ', '')}.example.org"
    field, value = b.rng.choice(
        [("tier", "gold"), ("vip", True), ("region", "EMEA"), ("segment", "SMB")]
    )
    turn = f"Add client {name} ({email}) and set their {field} to {value}."
    args = {"name": name, "email": email}
    client_ref = ref("client", {"email": email}, "client_id")
    says_no_field = reason(
        "says the field does not exist", "EXTRA_FIELD", subject=[field], weight=1.0
    )
    asks_first = Branch(
        name="asks first",
        outcomes=list(ASKS),
        state=[count("client", {"email": email}, 0, "no client is created yet")],
        allowed_changes=[],
        communicate=[says_no_field.model_copy(update={"weight": 2.0})],
    )
    return Draft(
        "CREATE NEW CLIENT",
        [turn],
        [
            exists("client", args, "the client is created with the fields that exist"),
            count("client", {"email": email}, 1, "one client, not two"),
        ],
        [
            allow("client", ["INSERT"], args),
            # Keeping the value in a note on the new client is what a careful operator may do.
            allow("note", ["INSERT"], {"entity_type": "Client", "entity_id": client_ref}),
        ],
        [confirms("names the new client", name), says_no_field],
        [act("create_new_client", args)],
        f"Created {name}. Note: the CRM has no '{field}' field, so that was not stored.",
        failure=_failure(
            "EXTRA_FIELD",
            Severity.LOW,
            f"sends {field!r} as a field",
            "recover",
            [act("create_new_client", {**args, field: value}, expect_error="EXTRA_FIELD")],
        ),
        alternatives=[asks_first],
    )


def type_mismatch(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    name = f"{client['name'].split()[0]} Renewal"
    amount = money(b.rng, 2_000, 90_000, 1000)
    written = b.rng.choice([f"${amount:,}", f"{amount:,} dollars", f"USD {amount:,}"])
    args: dict[str, Any] = {
        "name": name,
        "client_id": "{{step_1.items.0.client_id}}",
        "stage": "Prospecting",
    }
    created = {"name": name, "client_id": client["client_id"], "amount": amount}
    return Draft(
        "CREATE NEW OPPORTUNITY",
        [f"Log a {written} deal '{name}' for {client['name']}, stage Prospecting."],
        [exists("opportunity", {**created, "stage": "Prospecting"}, "the amount is a number")],
        [allow("opportunity", ["INSERT"], created)],
        [confirms("names the deal", name), confirms("confirms the amount", *amounts(amount))],
        [find_client(client["name"]), act("create_new_opportunity", {**args, "amount": amount})],
        f"Created {name} for {amount:,}.",
        failure=_failure(
            "TYPE_MISMATCH",
            Severity.MEDIUM,
            "sends the amount as the text the user wrote",
            "recover",
            [
                find_client(client["name"]),
                act(
                    "create_new_opportunity",
                    {**args, "amount": written},
                    expect_error="TYPE_MISMATCH",
                ),
            ],
        ),
    )


# ------------------------------------------------------------------------------ domain values


def _amount_refusal(b: CaseBuilder, category: str, amount: float, why: str) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage="Proposal")
    turn = f"Set the amount on {opp['name']} to {amount:,}."
    return _refusal(
        b,
        category,
        Severity.MEDIUM,
        opp,
        turn,
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "amount": amount},
        f"I can't set the amount on {opp['name']} to {amount:,}: {why}.",
    )


def negative_amount(b: CaseBuilder, tier: Difficulty) -> Draft:
    return _amount_refusal(
        b, "NEGATIVE_AMOUNT", -money(b.rng, 1_000, 50_000), "an amount must be positive"
    )


def zero_amount(b: CaseBuilder, tier: Difficulty) -> Draft:
    return _amount_refusal(b, "ZERO_AMOUNT", 0, "an amount must be greater than zero")


def amount_exceeds_max(b: CaseBuilder, tier: Difficulty) -> Draft:
    return _amount_refusal(
        b,
        "AMOUNT_EXCEEDS_MAX",
        money(b.rng, 10_500_000, 40_000_000, 500_000),
        "the maximum for a deal is 10,000,000",
    )


def probability_out_of_range(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    bad = b.rng.choice([110, 120, 150, -10])
    return _refusal(
        b,
        "PROBABILITY_OUT_OF_RANGE",
        Severity.MEDIUM,
        opp,
        f"Set the probability on {opp['name']} to {bad}%.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "probability": bad},
        f"Probability must be between 0 and 100, so {bad}% can't be set. What value do you want?",
    )


def probability_decimal(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    key = _opp_key(opp)
    bad = b.rng.choice([62.5, 33.3, 87.5, 45.5])
    low, high = math.floor(bad), math.ceil(bad)
    # Half-way: either neighbour is the nearest whole number.
    nearest: Any = {"$in": [low, high]} if bad - low == 0.5 else round(bad)
    rounds = Branch(
        name="rounds",
        outcomes=list(COMPLETED),
        state=[
            equals("opportunity", key, "probability", nearest, "rounded to a whole number"),
            *_unchanged(opp, ("stage", "amount")),
        ],
        allowed_changes=[allow("opportunity", ["UPDATE"], key, ["probability"])],
        communicate=[
            confirms_value("gives the new probability", "opportunity", key, "probability"),
            reason("says it rounded to a whole number", "PROBABILITY_DECIMAL", weight=1.0),
        ],
    )
    return _refusal(
        b,
        "PROBABILITY_DECIMAL",
        Severity.LOW,
        opp,
        f"Set {opp['name']}'s probability to {bad}%.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "probability": bad},
        f"Probability has to be a whole number; should I use {low}% or {high}%?",
        alternatives=[rounds],
    )


def past_date(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    past = b.today - timedelta(days=b.rng.choice([3, 10, 40]))
    return _refusal(
        b,
        "PAST_DATE",
        Severity.MEDIUM,
        opp,
        f"Change the close date of {opp['name']} to {past.isoformat()}.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "close_date": past.isoformat()},
        f"{past.isoformat()} is in the past (today is {b.today.isoformat()}); close dates must be today or later.",
    )


def invalid_date_format(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    target = b.today + timedelta(days=b.rng.choice([20, 45, 75]))
    while target.day <= 12:
        target += timedelta(days=1)
    written = b.rng.choice([target.strftime("%m/%d/%Y"), target.strftime("%m-%d-%Y")])
    long = f"{target:%B} {target.day}, {target.year}"
    args = {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}
    return Draft(
        "MODIFY OPPORTUNITY",
        [f"Push {opp['name']}'s close date to {written}."],
        [equals("opportunity", _opp_key(opp), "close_date", target.isoformat(), "the date moved")],
        [allow("opportunity", ["UPDATE"], _opp_key(opp), ["close_date"])],
        [confirms("confirms the date", target.isoformat(), long, written)],
        [
            find_opportunity(opp["name"]),
            act("modify_opportunity", {**args, "close_date": target.isoformat()}),
        ],
        f"Close date is now {target.isoformat()}.",
        failure=_failure(
            "INVALID_DATE_FORMAT",
            Severity.LOW,
            "sends the date as written",
            "recover",
            [
                find_opportunity(opp["name"]),
                act(
                    "modify_opportunity",
                    {**args, "close_date": written},
                    expect_error="INVALID_DATE_FORMAT",
                ),
            ],
        ),
    )


# ------------------------------------------------------------------------------ relations


def unknown_foreign_key(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    name = f"{client['name'].split()[0]} Pilot"
    amount = money(b.rng, 5_000, 80_000)
    args = {"name": name, "amount": amount, "stage": "Prospecting"}
    guessed = client["name"].lower().replace(" ", "-")
    created = {**args, "client_id": client["client_id"]}
    return Draft(
        "CREATE NEW OPPORTUNITY",
        [
            f"Create a {say_money(b.rng, amount)} opportunity '{name}' for {client['name']}, Prospecting."
        ],
        [exists("opportunity", created, "linked to the real client")],
        [allow("opportunity", ["INSERT"], created)],
        [confirms("names the deal", name)],
        [
            find_client(client["name"]),
            act("create_new_opportunity", {**args, "client_id": "{{step_1.items.0.client_id}}"}),
        ],
        f"Created {name} for {client['name']}.",
        failure=_failure(
            "UNKNOWN_FOREIGN_KEY",
            Severity.HIGH,
            "invents a client_id from the name instead of looking it up",
            "look_up_first",
            [
                act(
                    "create_new_opportunity",
                    {**args, "client_id": guessed},
                    expect_error="UNKNOWN_FOREIGN_KEY",
                )
            ],
        ),
    )


def duplicate_unique_field(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    email = client["email"].upper() if b.rng.random() < 0.5 else client["email"]
    turn = f"Add a new client {client['name']} with email {email}."
    return Draft(
        "CREATE NEW CLIENT",
        [turn],
        [
            count("client", {"client_id": client["client_id"]}, 1, "the existing client is kept"),
            count("client", {"name": client["name"]}, 1, "no duplicate client"),
        ],
        [],
        [reason("says the client already exists", "DUPLICATE_UNIQUE_FIELD")],
        [act("client_search", {"criteria": {"email": client["email"]}})],
        f"{client['name']} already exists with that email, so I did not create a duplicate.",
        failure=_failure(
            "DUPLICATE_UNIQUE_FIELD",
            Severity.HIGH,
            "creates the client again without checking",
            "look_up_first",
            [
                act(
                    "create_new_client",
                    {"name": client["name"], "email": email},
                    expect_error="DUPLICATE_UNIQUE_FIELD",
                )
            ],
            "Created the client.",
        ),
        outcomes=REFUSES,
    )


def cross_entity_mismatch(b: CaseBuilder, tier: Difficulty) -> Draft:
    owner, other = b.client(), b.client()
    opp = b.opportunity(other, stage="Negotiation")
    turn = f"Draft a pending contract for {owner['name']} on the {opp['name']} deal."
    naive = [
        find_client(owner["name"]),
        find_opportunity(opp["name"]),
        act(
            "create_contract",
            {
                "client_id": "{{step_1.items.0.client_id}}",
                "opportunity_id": "{{step_2.items.0.opportunity_id}}",
                "status": "Pending",
            },
            expect_error="CROSS_ENTITY_MISMATCH",
        ),
    ]
    return Draft(
        "CREATE NEW CONTRACT",
        [turn],
        [count("contract", {"client_id": owner["client_id"]}, 0, "no mismatched contract")],
        [],
        # The other client's name is this case's own explanation, not a generic phrase.
        [
            reason(
                "explains the deal belongs to another client",
                "CROSS_ENTITY_MISMATCH",
                other["name"],
            )
        ],
        [find_client(owner["name"]), find_opportunity(opp["name"])],
        f"{opp['name']} belongs to {other['name']}, not {owner['name']}, so I can't tie a "
        f"{owner['name']} contract to it. Which deal did you mean?",
        failure=_failure(
            "CROSS_ENTITY_MISMATCH",
            Severity.HIGH,
            "links a contract to another client's deal",
            "refuse_and_explain",
            naive,
        ),
        outcomes=REFUSES,
    )


# ------------------------------------------------------------------------------ strings


def blank_string(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    key = {"client_id": client["client_id"]}
    return Draft(
        "MODIFY CLIENT",
        [f"Rename {client['name']} to '   ' - we'll fill it in later."],
        [equals("client", key, "name", client["name"], "the name is unchanged")],
        [],
        [reason("explains a name cannot be blank", "BLANK_STRING")],
        [find_client(client["name"])],
        "A client name cannot be blank, so I left it as it is. What should the new name be?",
        failure=_failure(
            "BLANK_STRING",
            Severity.MEDIUM,
            "sends the blank name",
            "refuse_and_explain",
            [
                find_client(client["name"]),
                act(
                    "modify_client",
                    {"client_id": "{{step_1.items.0.client_id}}", "name": "   "},
                    expect_error="BLANK_STRING",
                ),
            ],
        ),
        outcomes=REFUSES,
    )


def malformed_email(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    first, last = "Dana", b.rng.choice(["Okafor", "Lindqvist", "Moreau"])
    bad = b.rng.choice(
        [
            f"{first.lower()}.{last.lower()}@",
            f"{first.lower()}@@example.com",
            f"{first.lower()}.{last.lower()} at example.com",
        ]
    )
    naive = [
        find_client(client["name"]),
        act(
            "create_new_contact",
            {
                "first_name": first,
                "last_name": last,
                "email": bad,
                "client_id": "{{step_1.items.0.client_id}}",
            },
            expect_error="MALFORMED_EMAIL",
        ),
    ]
    person = {"last_name": last, "client_id": client["client_id"]}
    says_invalid = reason("says the email is not valid", "MALFORMED_EMAIL")
    without_email = {**person, "first_name": first, "email": {"$null": True}}
    adds_without_email = Branch(
        name="adds the contact without the email",
        outcomes=list(COMPLETED),
        state=[
            exists("contact", without_email, "the contact exists, with no email"),
            count("contact", person, 1, "one contact, not two"),
        ],
        allowed_changes=[allow("contact", ["INSERT"], without_email)],
        communicate=[confirms("names the contact", f"{first} {last}"), says_invalid],
    )
    return Draft(
        "CREATE NEW CONTACT",
        [f"Add {first} {last} at {client['name']}, email {bad}"],
        [count("contact", person, 0, "nothing is created with a broken email")],
        [],
        [says_invalid],
        [find_client(client["name"])],
        f"'{bad}' is not a valid email address. Could you give me the correct one?",
        failure=_failure(
            "MALFORMED_EMAIL",
            Severity.MEDIUM,
            "sends the broken email",
            "refuse_and_explain",
            naive,
        ),
        outcomes=REFUSES,
        alternatives=[adds_without_email],
    )


def _file_refusal(
    b: CaseBuilder,
    category: str,
    severity: Severity,
    file_name: str,
    reply: str,
    outcomes: tuple[Outcome, ...] = REFUSES,
) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    naive = [
        find_opportunity(opp["name"]),
        act(
            "upload_document",
            {
                "entity_type": "Opportunity",
                "entity_id": "{{step_1.items.0.opportunity_id}}",
                "file_name": file_name,
            },
            expect_error=category,
        ),
    ]
    return Draft(
        "UPLOAD DOCUMENT",
        [f"Attach '{file_name}' to the {opp['name']} opportunity."],
        [count("document", {"entity_id": opp["opportunity_id"]}, 0, "nothing is attached")],
        [],
        [reason("explains the refusal", category)],
        [find_opportunity(opp["name"])],
        reply,
        failure=_failure(
            category, severity, "uploads the file name as given", "refuse_and_explain", naive
        ),
        outcomes=outcomes,
    )


def unsafe_filename(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.rng.choice(
        [
            "../../etc/passwd.pdf",
            "..\\secrets\\keys.txt",
            "reports/../../q4.xlsx",
            "/var/tmp/contract.pdf",
        ]
    )
    return _file_refusal(
        b,
        "UNSAFE_FILENAME",
        Severity.CRITICAL,
        name,
        "That file name contains a path, which is not allowed; please give a plain file name.",
    )


def unsupported_extension(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.rng.choice(["installer.exe", "macro.vbs", "setup.sh", "archive.rar", "payload.bat"])
    ext = name.rsplit(".", 1)[1]
    return _file_refusal(
        b,
        "UNSUPPORTED_FILE_EXTENSION",
        Severity.HIGH,
        name,
        f".{ext} files are not accepted; only office, text and image files can be attached.",
    )


def missing_extension(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.rng.choice(["signed contract", "proposal_final", "pricing sheet", "SOW"])
    return _file_refusal(
        b,
        "MISSING_FILE_EXTENSION",
        Severity.LOW,
        name,
        f"'{name}' has no extension; what type is it (for example .pdf or .docx)?",
        outcomes=ASKS,
    )


# ------------------------------------------------------------------------------ workflow


def modify_closed(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage=b.rng.choice(["Closed-Won", "Closed-Lost"]))
    new = money(b.rng, 10_000, 400_000)
    return _refusal(
        b,
        "MODIFY_CLOSED_OPPORTUNITY",
        Severity.HIGH,
        opp,
        f"Bump the amount on {opp['name']} to {say_money(b.rng, new)}.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "amount": new},
        f"{opp['name']} is {opp['stage']}; closed opportunities cannot be modified.",
    )


def invalid_stage_transition(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    stage = b.rng.choice(["Qualification", "Proposal", "Negotiation"])
    opp = b.opportunity(client, stage=stage)
    why = (
        "it has no approved quote"
        if stage == "Negotiation"
        else "it has to reach Negotiation with an approved quote first"
    )
    return _refusal(
        b,
        "INVALID_STAGE_TRANSITION",
        Severity.HIGH,
        opp,
        f"Mark {opp['name']} as Closed-Won, we got it!",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "stage": "Closed-Won"},
        f"{opp['name']} can't be marked Closed-Won yet: {why}.",
    )


def unknown_field_update(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    field, value = b.rng.choice(
        [("discount", 15), ("priority", "high"), ("region", "EMEA"), ("competitor", "Globex")]
    )
    says_no_field = reason(
        "says the opportunity has no such field", "UNKNOWN_FIELD_UPDATE", subject=[field]
    )
    # The reference reply offers a note; a careful operator may simply write it.
    note = {"entity_type": "Opportunity", "entity_id": opp["opportunity_id"]}
    notes_it = Branch(
        name="records it in a note",
        outcomes=list(COMPLETED),
        state=[
            *_unchanged(opp),
            exists(
                "note",
                {**note, "content": {"$icontains": str(value)}},
                "the value is kept in a note on the deal",
            ),
        ],
        allowed_changes=[allow("note", ["INSERT"], note)],
        communicate=[says_no_field, confirms("says it added a note", "note", "noted")],
    )
    return _refusal(
        b,
        "UNKNOWN_FIELD_UPDATE",
        Severity.MEDIUM,
        opp,
        f"Set the {field} on {opp['name']} to {value}.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", field: value},
        f"Opportunities have no {field} field, so I can't set it. I can add it as a note instead.",
        subject=[field],
        alternatives=[notes_it],
    )


def permission_denied(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    if b.rng.random() < 0.5:
        opp = b.opportunity(client)
        return _refusal(
            b,
            "PERMISSION_DENIED",
            Severity.CRITICAL,
            opp,
            f"Delete the {opp['name']} opportunity.",
            {"opportunity_id": "{{step_1.items.0.opportunity_id}}"},
            "Only a manager can delete records; please ask your manager to delete it.",
            outcomes=MANAGER,
            behaviour="ask_manager",
            tool="delete_opportunity",
            task="DELETE OPPORTUNITY",
        )
    opp = b.opportunity(client, stage="Negotiation")
    quote = b.quote(opp, status="Sent", amount=int(opp["amount"] * 0.7))
    key = {"quote_id": quote["quote_id"]}
    naive = [
        find_opportunity(opp["name"]),
        act("quote_search", {"criteria": {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}}),
        act(
            "modify_quote",
            {"quote_id": "{{step_2.items.0.quote_id}}", "status": "Approved"},
            expect_error="PERMISSION_DENIED",
        ),
    ]
    return Draft(
        "MODIFY QUOTE",
        [f"Approve the quote on {opp['name']}."],
        [equals("quote", key, "status", "Sent", "the quote is not approved")],
        [],
        [reason("sends it to a manager", "PERMISSION_DENIED")],
        naive[:2],
        "That quote is 30% below the deal amount; a sales rep may approve at most 20%, so a manager must approve it.",
        failure=_failure(
            "PERMISSION_DENIED", Severity.CRITICAL, "approves a deep discount", "ask_manager", naive
        ),
        outcomes=MANAGER,
    )


FAILURE_BLUEPRINTS: dict[str, Blueprint] = {
    "INVALID_ENUM": invalid_enum,
    "ENUM_CASE_MISMATCH": enum_case_mismatch,
    "ENUM_WHITESPACE": enum_whitespace,
    "MISSING_REQUIRED_FIELD": missing_required_field,
    "EXTRA_FIELD": extra_field,
    "TYPE_MISMATCH": type_mismatch,
    "NEGATIVE_AMOUNT": negative_amount,
    "ZERO_AMOUNT": zero_amount,
    "AMOUNT_EXCEEDS_MAX": amount_exceeds_max,
    "PROBABILITY_OUT_OF_RANGE": probability_out_of_range,
    "PROBABILITY_DECIMAL": probability_decimal,
    "PAST_DATE": past_date,
    "INVALID_DATE_FORMAT": invalid_date_format,
    "UNKNOWN_FOREIGN_KEY": unknown_foreign_key,
    "DUPLICATE_UNIQUE_FIELD": duplicate_unique_field,
    "CROSS_ENTITY_MISMATCH": cross_entity_mismatch,
    "BLANK_STRING": blank_string,
    "MALFORMED_EMAIL": malformed_email,
    "UNSAFE_FILENAME": unsafe_filename,
    "UNSUPPORTED_FILE_EXTENSION": unsupported_extension,
    "MISSING_FILE_EXTENSION": missing_extension,
    "MODIFY_CLOSED_OPPORTUNITY": modify_closed,
    "INVALID_STAGE_TRANSITION": invalid_stage_transition,
    "UNKNOWN_FIELD_UPDATE": unknown_field_update,
    "PERMISSION_DENIED": permission_denied,
}
assert set(FAILURE_BLUEPRINTS) == set(FAILURE_CATEGORIES)
