"""Failure-scenario blueprints: one per category of the customer's failure taxonomy.

Each sets a trap a naive agent falls into (its naive actions and reply are part of the
case) and states the right behaviour: recover with a corrected call, look the entity up
first, refuse and explain, or ask a manager.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from crmbench_contracts.cases import (
    FAILURE_CATEGORIES,
    Action,
    Difficulty,
    FailureSpec,
    Severity,
    Trap,
)
from crmbench_corpus.builder import (
    CaseBuilder,
    act,
    allow,
    count,
    equals,
    exists,
    mentions,
    money,
    say_money,
)
from crmbench_corpus.success import Blueprint, Draft, find_client, find_opportunity, pick

NOTHING_DONE = "Done! All set."


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


def _refusal(
    b: CaseBuilder,
    category: str,
    severity: Severity,
    opp: dict[str, Any],
    turn: str,
    naive_args: dict[str, Any],
    reason_phrases: list[str],
    reply: str,
    lookup: Action | None = None,
    tool: str = "modify_opportunity",
    task: str = "MODIFY OPPORTUNITY",
    description: str = "",
) -> Draft:
    """A request the agent must refuse and explain: nothing may change."""
    unchanged = [
        equals("opportunity", _opp_key(opp), f, opp[f], f"{f} unchanged")
        for f in ("stage", "amount", "probability")
    ]
    actions = [lookup or find_opportunity(opp["name"])]
    naive = [lookup or find_opportunity(opp["name"]), act(tool, naive_args, expect_error=category)]
    return Draft(
        task,
        [turn],
        unchanged,
        [],
        [mentions("explains why it cannot be done", *reason_phrases, weight=2.0)],
        actions,
        reply,
        failure=_failure(
            category,
            severity,
            description or "sends the request as given and reports success",
            "refuse_and_explain",
            naive,
        ),
    )


# ------------------------------------------------------------------------------ schema


def invalid_enum(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    bad = b.rng.choice(["Discovery", "Won", "On Hold", "Evaluation", "Pending"])
    turn = pick(b, "Set {o} to the '{s}' stage.", "move {o} into {s}").format(o=opp["name"], s=bad)
    return _refusal(
        b,
        "INVALID_ENUM",
        Severity.MEDIUM,
        opp,
        turn,
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "stage": bad},
        [
            "not a valid stage",
            "isn't a valid",
            "is not a valid",
            "valid stages",
            "Prospecting, Qualification",
        ],
        f"'{bad}' is not a valid stage; valid stages are Prospecting, Qualification, "
        "Proposal, Negotiation, Closed-Won and Closed-Lost. Which one do you mean?",
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
        [allow("opportunity", ["UPDATE"], _opp_key(opp), ["stage"])],
        [mentions("confirms the new stage", target)],
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
        [mentions("asks for the amount", "amount", "how much", "value", weight=2.0)],
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
    )


def extra_field(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.company_name()
    email = f"info@{name.lower().replace(' ', '')}.example.org"
    extra = b.rng.choice([("tier", "gold"), ("vip", True), ("region", "EMEA"), ("segment", "SMB")])
    turn = f"Add client {name} ({email}) and set their {extra[0]} to {extra[1]}."
    args = {"name": name, "email": email}
    return Draft(
        "CREATE NEW CLIENT",
        [turn],
        [exists("client", args, "the client is created with the fields that exist")],
        [allow("client", ["INSERT"], {"email": email})],
        [mentions("says the extra field is not supported", extra[0], weight=1.0)],
        [act("create_new_client", args)],
        f"Created {name}. Note: the CRM has no '{extra[0]}' field, so that was not stored.",
        failure=_failure(
            "EXTRA_FIELD",
            Severity.LOW,
            f"sends {extra[0]!r} as a field",
            "recover",
            [act("create_new_client", {**args, extra[0]: extra[1]}, expect_error="EXTRA_FIELD")],
        ),
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
    return Draft(
        "CREATE NEW OPPORTUNITY",
        [f"Log a {written} deal '{name}' for {client['name']}, stage Prospecting."],
        [exists("opportunity", {"name": name, "amount": amount}, "the amount is a number")],
        [allow("opportunity", ["INSERT"], {"name": name})],
        [mentions("names the deal", name)],
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


def _amount_refusal(b: CaseBuilder, category: str, amount: float, phrases: list[str]) -> Draft:
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
        phrases,
        f"I can't set the amount to {amount:,}: " + phrases[0] + ".",
    )


def negative_amount(b: CaseBuilder, tier: Difficulty) -> Draft:
    return _amount_refusal(
        b,
        "NEGATIVE_AMOUNT",
        -money(b.rng, 1_000, 50_000),
        ["must be positive", "greater than 0", "negative", "positive"],
    )


def zero_amount(b: CaseBuilder, tier: Difficulty) -> Draft:
    return _amount_refusal(b, "ZERO_AMOUNT", 0, ["greater than 0", "zero", "must be positive"])


def amount_exceeds_max(b: CaseBuilder, tier: Difficulty) -> Draft:
    return _amount_refusal(
        b,
        "AMOUNT_EXCEEDS_MAX",
        money(b.rng, 10_500_000, 40_000_000, 500_000),
        ["maximum of 10,000,000", "10,000,000", "10 million", "limit"],
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
        ["between 0 and 100", "0 to 100", "0-100", "0 and 100"],
        f"Probability must be between 0 and 100, so {bad}% can't be set. What value do you want?",
    )


def probability_decimal(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    bad = b.rng.choice([62.5, 33.3, 87.5, 45.5])
    return _refusal(
        b,
        "PROBABILITY_DECIMAL",
        Severity.LOW,
        opp,
        f"Set {opp['name']}'s probability to {bad}%.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "probability": bad},
        ["whole number", "integer", "round"],
        f"Probability has to be a whole number; should I use {int(bad)}% or {int(bad) + 1}%?",
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
        ["in the past", "past", "already passed", "before today"],
        f"{past.isoformat()} is in the past (today is {b.today.isoformat()}); close dates must be today or later.",
    )


def invalid_date_format(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    target = b.today + timedelta(days=b.rng.choice([20, 45, 75]))
    while target.day <= 12:
        target += timedelta(days=1)
    written = b.rng.choice([target.strftime("%m/%d/%Y"), target.strftime("%m-%d-%Y")])
    args = {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}
    return Draft(
        "MODIFY OPPORTUNITY",
        [f"Push {opp['name']}'s close date to {written}."],
        [equals("opportunity", _opp_key(opp), "close_date", target.isoformat(), "the date moved")],
        [allow("opportunity", ["UPDATE"], _opp_key(opp), ["close_date"])],
        [mentions("confirms the date", target.isoformat(), written)],
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
    return Draft(
        "CREATE NEW OPPORTUNITY",
        [
            f"Create a {say_money(b.rng, amount)} opportunity '{name}' for {client['name']}, Prospecting."
        ],
        [
            exists(
                "opportunity",
                {**args, "client_id": client["client_id"]},
                "linked to the real client",
            )
        ],
        [allow("opportunity", ["INSERT"], {"name": name})],
        [mentions("names the deal", name)],
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
        [
            mentions(
                "says the client already exists",
                "already exists",
                "already in",
                "existing",
                "already have",
                weight=2.0,
            )
        ],
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
        [
            mentions(
                "explains the deal belongs to another client",
                other["name"],
                "different client",
                "another client",
                "belongs to",
                weight=2.0,
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
        [mentions("explains a name cannot be blank", "blank", "empty", "cannot be", weight=2.0)],
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
    return Draft(
        "CREATE NEW CONTACT",
        [f"Add {first} {last} at {client['name']}, email {bad}"],
        [
            count(
                "contact",
                {"last_name": last, "client_id": client["client_id"]},
                0,
                "nothing is created with a broken email",
            )
        ],
        [],
        [
            mentions(
                "asks for a valid email",
                "valid email",
                "email address",
                "invalid",
                "not a valid",
                weight=2.0,
            )
        ],
        [find_client(client["name"])],
        f"'{bad}' is not a valid email address. Could you give me the correct one?",
        failure=_failure(
            "MALFORMED_EMAIL",
            Severity.MEDIUM,
            "sends the broken email",
            "refuse_and_explain",
            naive,
        ),
    )


def _file_refusal(
    b: CaseBuilder,
    category: str,
    severity: Severity,
    file_name: str,
    phrases: list[str],
    reply: str,
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
        [mentions("explains the refusal", *phrases, weight=2.0)],
        [find_opportunity(opp["name"])],
        reply,
        failure=_failure(
            category, severity, "uploads the file name as given", "refuse_and_explain", naive
        ),
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
        ["path", "unsafe", "not allowed", "not a safe"],
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
        [f".{ext}", "not supported", "not accepted", "file type"],
        f".{ext} files are not accepted; only office, text and image files can be attached.",
    )


def missing_extension(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.rng.choice(["signed contract", "proposal_final", "pricing sheet", "SOW"])
    return _file_refusal(
        b,
        "MISSING_FILE_EXTENSION",
        Severity.LOW,
        name,
        ["extension", "file type", ".pdf"],
        f"'{name}' has no extension; what type is it (for example .pdf or .docx)?",
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
        ["closed", opp["stage"]],
        f"{opp['name']} is {opp['stage']}; closed opportunities cannot be modified.",
    )


def invalid_stage_transition(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    stage = b.rng.choice(["Qualification", "Proposal", "Negotiation"])
    opp = b.opportunity(client, stage=stage)
    reason = (
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
        ["approved quote", "Negotiation"],
        f"{opp['name']} can't be marked Closed-Won yet: {reason}.",
    )


def unknown_field_update(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    field, value = b.rng.choice(
        [("discount", 15), ("priority", "high"), ("region", "EMEA"), ("competitor", "Globex")]
    )
    return _refusal(
        b,
        "UNKNOWN_FIELD_UPDATE",
        Severity.MEDIUM,
        opp,
        f"Set the {field} on {opp['name']} to {value}.",
        {"opportunity_id": "{{step_1.items.0.opportunity_id}}", field: value},
        [f"no {field}", "not a field", "doesn't have", "does not have", "no field"],
        f"Opportunities have no {field} field, so I can't set it. I can add it as a note instead.",
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
            ["manager", "permission", "not allowed"],
            "Only a manager can delete records; please ask your manager to delete it.",
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
        [mentions("sends it to a manager", "manager", weight=2.0)],
        naive[:2],
        "That quote is 30% below the deal amount; a sales rep may approve at most 20%, so a manager must approve it.",
        failure=_failure(
            "PERMISSION_DENIED", Severity.CRITICAL, "approves a deep discount", "ask_manager", naive
        ),
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
