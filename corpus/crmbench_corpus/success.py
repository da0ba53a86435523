"""Success-path blueprints: one per task of the customer's agent logs (agent_tasks.csv).

A success path's outcome is `completed`. Its allowed changes name the rows and fields the
request implies and no more: a created row's INSERT rule pins what the request says and
what it implies by leaving a field out (the default quote prefix, no validity date), with
room for exactly one row, so a duplicate is collateral damage; complex flows also count
the rows. A stage move may carry the probability with it (domain.md's stage rules: the
user expects the probability to follow the stage). Facts that confirm a change are
affirmed: "I did not move it to Proposal" does not confirm Proposal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from crmbench_contracts.cases import (
    Action,
    AllowedChange,
    Branch,
    CommunicationFact,
    Difficulty,
    Expected,
    FailureSpec,
    Outcome,
    StateAssertion,
)
from crmbench_corpus.builder import (
    DEAL_KINDS,
    DEFAULT_QUOTE_PREFIX,
    FILE_KINDS,
    PEOPLE_FIRST,
    PEOPLE_LAST,
    TITLES,
    CaseBuilder,
    act,
    allow,
    confirms,
    count,
    equals,
    exists,
    mentions,
    money,
    ref,
    say_date,
    say_money,
    typo,
)

COMPLETED = (Outcome.COMPLETED,)
STAGE_MOVE = ["stage", "probability"]
"""The fields a stage move may change: the stage, and the probability that follows it."""


@dataclass
class Draft:
    """A blueprint's output: everything of a case but its id, split and shared fields.

    `state`, `allowed`, `communicate` and `outcomes` are the primary branch, the one the
    reference actions and reply take; `alternatives` are further acceptable branches
    (cases.md: "a case must not punish what a careful human operator would do").
    """

    task_category: str
    turns: list[str]
    state: list[StateAssertion]
    allowed: list[AllowedChange]
    communicate: list[CommunicationFact]
    actions: list[Action]
    reply: str
    tags: list[str] = field(default_factory=list)
    role: str = "sales_rep"
    failure: FailureSpec | None = None
    difficulty: Difficulty | None = None
    outcomes: Sequence[Outcome] = COMPLETED
    alternatives: list[Branch] = field(default_factory=list)

    def expected(self) -> Expected:
        return Expected(
            state=self.state,
            allowed_changes=self.allowed,
            communicate=self.communicate,
            reference_actions=self.actions,
            reference_reply=self.reply,
            outcomes=list(self.outcomes),
            alternatives=self.alternatives,
        )


Blueprint = Callable[[CaseBuilder, Difficulty], Draft]


def amounts(value: float) -> list[str]:
    whole = int(value)
    return [f"{whole:,}", str(whole), f"{whole / 1000:g}k", f"{whole / 1000:g}K"]


def find_client(name: str) -> Action:
    return act("client_search", {"criteria": {"name": name}})


def find_opportunity(name: str) -> Action:
    return act("opportunity_search", {"criteria": {"name": name}})


def pick(b: CaseBuilder, *options: str) -> str:
    return typo(b.rng, b.rng.choice(options))


def quotes_on(b: CaseBuilder, opportunity_id: str) -> int:
    """How many quotes the case seeds on an opportunity (the count before the task)."""
    return sum(q["opportunity_id"] == opportunity_id for q in b.seed.get("quote", []))


def new_quote(opportunity: Any, amount: float, valid_until: str | None) -> dict[str, Any]:
    """What a quote created as asked holds besides its status: the opportunity, the
    amount, the validity given (none when the request names none) and the default prefix."""
    return {
        "opportunity_id": opportunity,
        "amount": amount,
        "valid_until": valid_until if valid_until is not None else {"$null": True},
        "quote_prefix": DEFAULT_QUOTE_PREFIX,
    }


# --------------------------------------------------------------------------- opportunities


def create_opportunity(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    name = f"{client['name'].split()[0]} {b.rng.choice(DEAL_KINDS)}"
    amount = money(b.rng, 5_000, 900_000)
    stage = b.rng.choice(["Prospecting", "Qualification", "Proposal"])
    args: dict[str, Any] = {
        "name": name,
        "client_id": "{{step_1.items.0.client_id}}",
        "amount": amount,
        "stage": stage,
    }
    ask = pick(
        b,
        "Create a new opportunity called '{n}' for {c}, {a}, stage {s}.",
        "can you log a deal '{n}' for {c}? {a}, it's at {s}",
        "New opp for {c}: '{n}', worth {a}, stage {s} please",
    )
    turn = ask.format(n=name, c=client["name"], a=say_money(b.rng, amount), s=stage)
    where = {"name": name, "client_id": client["client_id"], "amount": amount, "stage": stage}
    turns = [turn]
    if tier != Difficulty.SIMPLE:
        close = b.today + timedelta(days=b.rng.choice([30, 45, 60, 90]))
        probability = b.rng.choice([10, 20, 25, 30, 40])
        args |= {"close_date": close.isoformat(), "probability": probability}
        where |= {"close_date": close.isoformat(), "probability": probability}
        turns[0] += f" Close date {say_date(b.rng, close, b.today)}, probability {probability}%."
    actions = [find_client(client["name"]), act("create_new_opportunity", args)]
    state = [exists("opportunity", where, "the new opportunity exists with the given fields")]
    allowed = [allow("opportunity", ["INSERT"], where)]
    reply = f"Created the opportunity '{name}' for {client['name']}."
    if tier == Difficulty.COMPLEX:
        quote_amount = money(b.rng, max(1000, int(amount * 0.8)), amount)
        kind, ext = b.rng.choice(FILE_KINDS)
        file_name = f"{kind}.{ext}"
        turns += [
            f"Now put a quote on it for {say_money(b.rng, quote_amount)}.",
            f"And attach {file_name} to the opportunity.",
        ]
        opp_ref = ref("opportunity", {"name": name}, "opportunity_id")
        actions += [
            act(
                "create_quote",
                {"opportunity_id": "{{step_2.opportunity_id}}", "amount": quote_amount},
            ),
            act(
                "upload_document",
                {
                    "entity_type": "Opportunity",
                    "entity_id": "{{step_2.opportunity_id}}",
                    "file_name": file_name,
                },
            ),
        ]
        quote = {**new_quote(opp_ref, quote_amount, None), "status": "Draft"}
        document = {"entity_type": "Opportunity", "entity_id": opp_ref, "file_name": file_name}
        state += [
            exists("quote", quote, "the opportunity has the quote"),
            count("quote", {"opportunity_id": opp_ref}, 1, "one quote, not two"),
            exists("document", document, "the document is attached to the opportunity"),
            count("document", {"entity_id": opp_ref}, 1, "one document, not two"),
        ]
        allowed += [allow("quote", ["INSERT"], quote), allow("document", ["INSERT"], document)]
        reply += f" Added a quote for {quote_amount:,} and attached {file_name}."
    return Draft(
        "CREATE NEW OPPORTUNITY",
        turns,
        state,
        allowed,
        [confirms("names the opportunity", name)],
        actions,
        reply,
    )


def modify_opportunity(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage="Qualification")
    key = {"opportunity_id": opp["opportunity_id"]}
    if tier == Difficulty.COMPLEX:
        return _deal_flow(b, client, opp)
    target = b.rng.choice(["Proposal", "Negotiation", "Prospecting"])
    probability = b.rng.choice([35, 50, 60, 75])
    changes: dict[str, Any] = {"stage": target, "probability": probability}
    text = pick(
        b,
        "Move '{o}' to {s} and set the probability to {p}%.",
        "update {o}: stage {s}, probability {p}%",
        "The {o} deal is now in {s}, {p}% likely. Please update it.",
    )
    turn = text.format(o=opp["name"], s=target, p=probability)
    if tier == Difficulty.MEDIUM:
        new_amount = money(b.rng, 10_000, 500_000)
        changes["amount"] = new_amount
        turn += f" The amount is now {say_money(b.rng, new_amount)}."
    actions = [
        find_opportunity(opp["name"]),
        act(
            "modify_opportunity", {"opportunity_id": "{{step_1.items.0.opportunity_id}}", **changes}
        ),
    ]
    state = [equals("opportunity", key, f, v, f"{f} updated") for f, v in changes.items()]
    return Draft(
        "MODIFY OPPORTUNITY",
        [turn],
        state,
        [allow("opportunity", ["UPDATE"], key, sorted(changes))],
        [
            confirms("names the opportunity", opp["name"]),
            confirms("confirms the new stage", target),
        ],
        actions,
        f"Updated {opp['name']}: " + ", ".join(f"{k} {v}" for k, v in changes.items()),
    )


def _deal_flow(b: CaseBuilder, client: dict[str, Any], opp: dict[str, Any]) -> Draft:
    """Complex: move a deal to negotiation, quote, send, approve, win, contract, attach."""
    key = {"opportunity_id": opp["opportunity_id"]}
    amount = opp["amount"]
    quote_amount = int(amount * b.rng.choice([0.9, 0.95, 1.0]))
    turns = [
        f"{opp['name']} is moving fast: put it in Negotiation and quote it at "
        f"{say_money(b.rng, quote_amount)}.",
        "They accepted. Send the quote, mark it approved, and close the deal as won.",
        f"Last thing: create the active contract for {client['name']} on that deal, worth "
        f"{say_money(b.rng, quote_amount)}, and attach signed_contract.pdf to it.",
    ]
    q = "{{step_3.quote_id}}"
    actions = [
        find_opportunity(opp["name"]),
        act(
            "modify_opportunity",
            {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "stage": "Negotiation"},
        ),
        act(
            "create_quote",
            {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "amount": quote_amount},
        ),
        act("modify_quote", {"quote_id": q, "status": "Sent"}),
        act("modify_quote", {"quote_id": q, "status": "Approved"}),
        act(
            "modify_opportunity",
            {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "stage": "Closed-Won"},
        ),
        act(
            "create_contract",
            {
                "client_id": "{{step_1.items.0.client_id}}",
                "opportunity_id": "{{step_1.items.0.opportunity_id}}",
                "status": "Active",
                "value": quote_amount,
            },
        ),
        act(
            "upload_document",
            {
                "entity_type": "Contract",
                "entity_id": "{{step_7.contract_id}}",
                "file_name": "signed_contract.pdf",
            },
        ),
    ]
    contract_ref = ref("contract", {"opportunity_id": opp["opportunity_id"]}, "contract_id")
    quote = new_quote(opp["opportunity_id"], quote_amount, None)
    contract = {
        "opportunity_id": opp["opportunity_id"],
        "status": "Active",
        "value": quote_amount,
        "client_id": client["client_id"],
    }
    document = {
        "entity_type": "Contract",
        "entity_id": contract_ref,
        "file_name": "signed_contract.pdf",
    }
    quotes_before = quotes_on(b, opp["opportunity_id"])
    state = [
        equals("opportunity", key, "stage", "Closed-Won", "the deal is won"),
        exists("quote", {**quote, "status": "Approved"}, "the quote is approved"),
        count(
            "quote",
            {"opportunity_id": opp["opportunity_id"]},
            quotes_before + 1,
            "one quote was created, not more",
        ),
        exists("contract", contract, "the active contract exists"),
        count("contract", {"opportunity_id": opp["opportunity_id"]}, 1, "one contract"),
        exists("document", document, "the contract is attached"),
        count("document", {"entity_id": contract_ref}, 1, "one document"),
    ]
    # One quote, created and then moved through its statuses: one row under one rule.
    allowed = [
        allow("opportunity", ["UPDATE"], key, STAGE_MOVE),
        allow("quote", ["INSERT", "UPDATE"], quote, ["status"]),
        allow("contract", ["INSERT"], contract),
        allow("document", ["INSERT"], document),
    ]
    return Draft(
        "MODIFY OPPORTUNITY",
        turns,
        state,
        allowed,
        [confirms("confirms the deal is won", "won", "Closed-Won")],
        actions,
        f"{opp['name']} is Closed-Won with an approved quote of {quote_amount:,}; the "
        "active contract is created and signed_contract.pdf attached.",
        tags=["multi-step", "cross-entity", "multi-turn"],
    )


def opportunity_search(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    stage = b.rng.choice(["Qualification", "Proposal", "Negotiation"])
    hits = [b.opportunity(client, stage=stage) for _ in range(2)]
    while hits[1]["name"] == hits[0]["name"]:
        hits[1]["name"] = f"{hits[1]['name']} II"
    b.opportunity(client, stage="Closed-Lost", name=f"{client['name'].split()[0]} Old Deal")
    text = pick(
        b,
        "Which of {c}'s deals are in {s}?",
        "show me open {s} opps for {c}",
        "List {c} opportunities at the {s} stage.",
    )
    actions = [
        find_client(client["name"]),
        act(
            "opportunity_search",
            {"criteria": {"client_id": "{{step_1.items.0.client_id}}", "stage": stage}},
        ),
    ]
    facts = [mentions(f"lists {h['name']}", h["name"]) for h in hits]
    return Draft(
        "OPPORTUNITY SEARCH",
        [text.format(c=client["name"], s=stage)],
        [],
        [],
        facts,
        actions,
        f"{client['name']} has {hits[0]['name']} and {hits[1]['name']} in {stage}.",
    )


def view_opportunity_details(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage=b.rng.choice(["Proposal", "Negotiation", "Qualification"]))
    text = pick(
        b,
        "What stage is {o} at, and what's it worth?",
        "quick one - where are we on {o}? stage + amount",
        "Give me the details of {o}.",
    )
    actions = [
        find_opportunity(opp["name"]),
        act("view_opportunity_details", {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}),
    ]
    facts = [
        mentions("gives the stage", opp["stage"]),
        mentions("gives the amount", *amounts(opp["amount"])),
    ]
    return Draft(
        "VIEW OPPORTUNITY DETAILS",
        [text.format(o=opp["name"])],
        [],
        [],
        facts,
        actions,
        f"{opp['name']} is in {opp['stage']}, worth {opp['amount']:,}.",
    )


def opportunity_details(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    close = opp["close_date"]
    actions = [
        find_opportunity(opp["name"]),
        act("opportunity_details", {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}),
    ]
    long = date.fromisoformat(close).strftime("%B %d, %Y").replace(" 0", " ")
    return Draft(
        "OPPORTUNITY DETAILS",
        [f"When is {opp['name']} expected to close?"],
        [],
        [],
        [mentions("gives the close date", close, long)],
        actions,
        f"{opp['name']} is expected to close on {close}.",
    )


def clone_opportunity(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client)
    new_name = f"{opp['name']} {b.rng.choice(['2026', 'Phase 2', 'Renewal'])}"
    text = pick(b, "Clone {o} as '{n}'.", "make a copy of the {o} opp, call it '{n}'")
    actions = [
        find_opportunity(opp["name"]),
        act(
            "clone_opportunity",
            {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "name": new_name},
        ),
    ]
    where = {
        "name": new_name,
        "client_id": client["client_id"],
        "amount": opp["amount"],
        "stage": opp["stage"],
    }
    return Draft(
        "CLONE OPPORTUNITY",
        [text.format(o=opp["name"], n=new_name)],
        [
            exists("opportunity", where, "the copy exists with the original's fields"),
            count("opportunity", {"name": opp["name"]}, 1, "the original is still there"),
        ],
        [allow("opportunity", ["INSERT"], where)],
        [confirms("names the copy", new_name)],
        actions,
        f"Cloned it as {new_name}.",
    )


def summarize_opportunities(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opps = [b.opportunity(client, stage=s) for s in ("Qualification", "Proposal", "Negotiation")]
    total = sum(o["amount"] for o in opps)
    actions = [
        find_client(client["name"]),
        act("summarize_opportunities", {"client_id": "{{step_1.items.0.client_id}}"}),
    ]
    text = pick(
        b, "What's the total value of {c}'s pipeline?", "how much pipeline do we have with {c}?"
    )
    return Draft(
        "SUMMARIZE OPPORTUNITIES",
        [text.format(c=client["name"])],
        [],
        [],
        [mentions("gives the total", *amounts(total))],
        actions,
        f"{client['name']} has 3 opportunities totalling {total:,}.",
    )


# --------------------------------------------------------------------------- clients, contacts


def create_client(b: CaseBuilder, tier: Difficulty) -> Draft:
    name = b.company_name()
    email = f"hello@{name.lower().replace(' ', '')}.example.org"
    industry = b.rng.choice(["Technology", "Healthcare", "Retail", "Energy"])
    status = b.rng.choice(["Active", "Prospect"])
    args: dict[str, Any] = {"name": name, "email": email, "industry": industry, "status": status}
    text = pick(
        b,
        "Add a new client {n}, email {e}, industry {i}, status {s}.",
        "pls create client {n} ({e}) - {i}, {s}",
    )
    turn = text.format(n=name, e=email, i=industry, s=status)
    if tier != Difficulty.SIMPLE:
        phone = f"+1-555-{b.rng.randrange(1000, 9999)}"
        args["phone"] = phone
        turn += f" Phone {phone}."
    return Draft(
        "CREATE NEW CLIENT",
        [turn],
        [exists("client", args, "the client exists")],
        [allow("client", ["INSERT"], args)],
        [confirms("names it", name)],
        [act("create_new_client", args)],
        f"Created the client {name}.",
    )


def modify_client(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client(status="Active")
    key = {"client_id": client["client_id"]}
    if b.rng.random() < 0.5:
        changes = {"status": "Inactive"}
        turn = f"{client['name']} stopped buying from us. Mark them Inactive."
    else:
        changes = {"phone": f"+1-555-{b.rng.randrange(1000, 9999)}"}
        turn = f"New phone number for {client['name']}: {changes['phone']}"
    return Draft(
        "MODIFY CLIENT",
        [turn],
        [equals("client", key, f, v, f"{f} updated") for f, v in changes.items()],
        [allow("client", ["UPDATE"], key, sorted(changes))],
        [confirms("names the client", client["name"])],
        [
            find_client(client["name"]),
            act("modify_client", {"client_id": "{{step_1.items.0.client_id}}", **changes}),
        ],
        f"Updated {client['name']}.",
    )


def client_search(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    return Draft(
        "CLIENT SEARCH",
        [f"Which client has the email {client['email']}?"],
        [],
        [],
        [mentions("names the client", client["name"])],
        [act("client_search", {"criteria": {"email": client["email"]}})],
        f"That is {client['name']}.",
    )


def create_contact(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    first, last = b.rng.choice(PEOPLE_FIRST), b.rng.choice(PEOPLE_LAST)
    title = b.rng.choice(TITLES)
    email = f"{first.lower()}.{last.lower()}@{client['email'].split('@')[1]}"
    args = {
        "first_name": first,
        "last_name": last,
        "client_id": "{{step_1.items.0.client_id}}",
        "title": title,
        "email": email,
    }
    text = pick(
        b,
        "Add {f} {l} ({t}) as a contact at {c}, email {e}.",
        "new contact at {c}: {f} {l}, {t}, {e}",
    )
    where = {**args, "client_id": client["client_id"]}
    return Draft(
        "CREATE NEW CONTACT",
        [text.format(f=first, l=last, t=title, c=client["name"], e=email)],
        [exists("contact", where, "the contact exists at the client")],
        [allow("contact", ["INSERT"], where)],
        [confirms("names the contact", f"{first} {last}", last)],
        [find_client(client["name"]), act("create_new_contact", args)],
        f"Added {first} {last} at {client['name']}.",
    )


def modify_contact(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    person = b.contact(client)
    title = b.rng.choice([t for t in TITLES if t != person["title"]])
    key = {"contact_id": person["contact_id"]}
    return Draft(
        "MODIFY CONTACT",
        [
            f"{person['first_name']} {person['last_name']} at {client['name']} is now "
            f"{title}. Update the contact please."
        ],
        [equals("contact", key, "title", title, "title updated")],
        [allow("contact", ["UPDATE"], key, ["title"])],
        [confirms("names the contact", person["last_name"])],
        [
            act(
                "contact_search",
                {
                    "criteria": {
                        "first_name": person["first_name"],
                        "last_name": person["last_name"],
                        "client_id": client["client_id"],
                    }
                },
            ),
            act("modify_contact", {"contact_id": "{{step_1.items.0.contact_id}}", "title": title}),
        ],
        f"Updated {person['first_name']} {person['last_name']}'s title to {title}.",
    )


def contact_search(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    person = b.contact(client)
    b.contact(client)
    text = pick(b, "What's {f} {l}'s email at {c}?", "need the email for {f} {l} ({c})")
    return Draft(
        "CONTACT SEARCH",
        [text.format(f=person["first_name"], l=person["last_name"], c=client["name"])],
        [],
        [],
        [mentions("gives the email", person["email"])],
        [
            act(
                "contact_search",
                {
                    "criteria": {
                        "first_name": person["first_name"],
                        "last_name": person["last_name"],
                        "client_id": client["client_id"],
                    }
                },
            )
        ],
        f"{person['first_name']}'s email is {person['email']}.",
    )


# --------------------------------------------------------------------------- quotes


def create_quote(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage="Proposal")
    amount = money(b.rng, int(opp["amount"] * 0.85), opp["amount"])
    args: dict[str, Any] = {"opportunity_id": "{{step_1.items.0.opportunity_id}}", "amount": amount}
    text = pick(
        b,
        "Create a quote for {o} at {a}.",
        "quote the {o} deal, {a}",
        "Put together a quote on {o} for {a}.",
    )
    turns = [text.format(o=opp["name"], a=say_money(b.rng, amount))]
    valid: str | None = None
    if tier != Difficulty.SIMPLE:
        valid = (b.today + timedelta(days=30)).isoformat()
        args["valid_until"] = valid
        turns[0] += f" Valid until {say_date(b.rng, date.fromisoformat(valid), b.today)}."
    quote = new_quote(opp["opportunity_id"], amount, valid)
    actions = [find_opportunity(opp["name"]), act("create_quote", args)]
    status = "Draft"
    allowed = [allow("quote", ["INSERT"], {**quote, "status": status})]
    if tier == Difficulty.COMPLEX:
        turns.append("Looks good - send it to the client.")
        actions.append(act("modify_quote", {"quote_id": "{{step_2.quote_id}}", "status": "Sent"}))
        # Created, then sent: one row (created as Sent directly is the same row).
        allowed = [allow("quote", ["INSERT", "UPDATE"], quote, ["status"])]
        status = "Sent"
    before = quotes_on(b, opp["opportunity_id"])
    return Draft(
        "CREATE QUOTE",
        turns,
        [
            exists("quote", {**quote, "status": status}, "the quote exists"),
            count(
                "quote",
                {"opportunity_id": opp["opportunity_id"]},
                before + 1,
                "one quote was created, not more",
            ),
        ],
        allowed,
        [confirms("confirms the amount", *amounts(amount))],
        actions,
        f"Quote for {opp['name']} at {amount:,} is {status}.",
    )


def _quoted_opportunity(
    b: CaseBuilder, statuses: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    client = b.client()
    opp = b.opportunity(client, stage="Negotiation")
    quotes = []
    for i, status in enumerate(statuses):
        amount = int(opp["amount"] * (0.97 - 0.04 * i))
        quotes.append(b.quote(opp, status=status, amount=amount))
    return opp, quotes


def modify_quote(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, (quote,) = _quoted_opportunity(b, ["Draft"])
    key = {"quote_id": quote["quote_id"]}
    return Draft(
        "MODIFY QUOTE",
        [f"Mark the draft quote on {opp['name']} as Sent."],
        [equals("quote", key, "status", "Sent", "the quote is sent")],
        [allow("quote", ["UPDATE"], key, ["status"])],
        [confirms("confirms it was sent", "sent")],
        [
            find_opportunity(opp["name"]),
            act(
                "quote_search",
                {
                    "criteria": {
                        "opportunity_id": "{{step_1.items.0.opportunity_id}}",
                        "status": "Draft",
                    }
                },
            ),
            act("modify_quote", {"quote_id": "{{step_2.items.0.quote_id}}", "status": "Sent"}),
        ],
        "The quote is now Sent.",
    )


def cancel_quote(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, (quote,) = _quoted_opportunity(b, ["Sent"])
    key = {"quote_id": quote["quote_id"]}
    return Draft(
        "CANCEL QUOTE",
        [f"Cancel the quote on {opp['name']}, they went another way."],
        [equals("quote", key, "status", "Canceled", "the quote is canceled")],
        [allow("quote", ["UPDATE"], key, ["status"])],
        [confirms("confirms the cancellation", "canceled", "cancelled", "cancel")],
        [
            find_opportunity(opp["name"]),
            act(
                "quote_search",
                {"criteria": {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}},
            ),
            act("cancel_quote", {"quote_id": "{{step_2.items.0.quote_id}}"}),
        ],
        "Canceled the quote.",
    )


def delete_quote(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, quotes = _quoted_opportunity(b, ["Sent", "Rejected"])
    rejected = quotes[1]
    return Draft(
        "DELETE QUOTE",
        [f"Delete the rejected quote on {opp['name']}."],
        [
            absent_quote(rejected),
            count("quote", {"opportunity_id": opp["opportunity_id"]}, 1, "the other quote stays"),
        ],
        [allow("quote", ["DELETE"], {"quote_id": rejected["quote_id"]})],
        [confirms("confirms the deletion", "deleted", "removed", "delete")],
        [
            find_opportunity(opp["name"]),
            act(
                "quote_search",
                {
                    "criteria": {
                        "opportunity_id": "{{step_1.items.0.opportunity_id}}",
                        "status": "Rejected",
                    }
                },
            ),
            act("delete_quote", {"quote_id": "{{step_2.items.0.quote_id}}"}),
        ],
        "Deleted the rejected quote.",
        role="manager",
    )


def absent_quote(quote: dict[str, Any]) -> StateAssertion:
    return StateAssertion(
        kind="row_absent",
        table="quote",
        where={"quote_id": quote["quote_id"]},
        description="the quote is gone",
    )


def quote_search(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, quotes = _quoted_opportunity(b, ["Draft", "Sent", "Draft"])
    drafts = [q for q in quotes if q["status"] == "Draft"]
    return Draft(
        "QUOTE SEARCH",
        [f"Which quotes on {opp['name']} are still drafts? Amounts please."],
        [],
        [],
        [mentions(f"lists the draft of {q['amount']}", *amounts(q["amount"])) for q in drafts],
        [
            find_opportunity(opp["name"]),
            act(
                "quote_search",
                {
                    "criteria": {
                        "opportunity_id": "{{step_1.items.0.opportunity_id}}",
                        "status": "Draft",
                    }
                },
            ),
        ],
        "Drafts: " + ", ".join(f"{q['amount']:,}" for q in drafts),
    )


def quote_details(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, (quote,) = _quoted_opportunity(b, ["Sent"])
    return Draft(
        "QUOTE DETAILS",
        [f"How much is the quote on {opp['name']}, and what's its status?"],
        [],
        [],
        [
            mentions("gives the amount", *amounts(quote["amount"])),
            mentions("gives the status", "Sent"),
        ],
        [
            find_opportunity(opp["name"]),
            act(
                "quote_search",
                {"criteria": {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}},
            ),
            act("quote_details", {"quote_id": "{{step_2.items.0.quote_id}}"}),
        ],
        f"The quote is {quote['amount']:,} and Sent.",
    )


def compare_quotes(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, quotes = _quoted_opportunity(b, ["Sent", "Draft"])
    low = min(quotes, key=lambda q: q["amount"])
    return Draft(
        "COMPARE QUOTES",
        [f"Compare the quotes on {opp['name']} - which is the lowest?"],
        [],
        [],
        [mentions("names the lowest amount", *amounts(low["amount"]))],
        [
            find_opportunity(opp["name"]),
            act("compare_quotes", {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}),
        ],
        f"The lowest quote is {low['amount']:,}.",
    )


def compare_quote_details(b: CaseBuilder, tier: Difficulty) -> Draft:
    opp, quotes = _quoted_opportunity(b, ["Sent", "Draft"])
    diff = abs(quotes[0]["amount"] - quotes[1]["amount"])
    return Draft(
        "COMPARE QUOTE DETAILS",
        [f"How far apart are the two quotes on {opp['name']}?"],
        [],
        [],
        [mentions("gives the difference", *amounts(diff))],
        [
            find_opportunity(opp["name"]),
            act(
                "quote_search",
                {"criteria": {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}},
            ),
            act(
                "compare_quote_details",
                {"quote_ids": ["{{step_2.items.0.quote_id}}", "{{step_2.items.1.quote_id}}"]},
            ),
        ],
        f"They differ by {diff:,}.",
    )


def quote_prefixes(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage="Proposal")
    prefix = f"{client['name'][:3].upper()}-{b.rng.randrange(10, 99)}"
    b.quote(opp, quote_prefix=prefix)
    return Draft(
        "QUOTE PREFIXES",
        ["Which quote prefixes are in use right now?"],
        [],
        [],
        [mentions("lists the new prefix", prefix)],
        [act("quote_prefixes")],
        f"Prefixes in use include {prefix}.",
    )


# --------------------------------------------------------------------------- the rest


def upload_document(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    kind, ext = b.rng.choice(FILE_KINDS)
    file_name = f"{kind}.{ext}"
    if tier == Difficulty.COMPLEX:
        contract = b.contract(client)
        turn = f"Attach {file_name} to {client['name']}'s active contract."
        actions = [
            find_client(client["name"]),
            act(
                "contract_search",
                {"criteria": {"client_id": "{{step_1.items.0.client_id}}", "status": "Active"}},
            ),
            act(
                "upload_document",
                {
                    "entity_type": "Contract",
                    "entity_id": "{{step_2.items.0.contract_id}}",
                    "file_name": file_name,
                },
            ),
        ]
        where = {
            "entity_type": "Contract",
            "entity_id": contract["contract_id"],
            "file_name": file_name,
        }
    else:
        opp = b.opportunity(client)
        turn = pick(b, "Attach {f} to the {o} opportunity.", "upload {f} on {o} pls").format(
            f=file_name, o=opp["name"]
        )
        actions = [
            find_opportunity(opp["name"]),
            act(
                "upload_document",
                {
                    "entity_type": "Opportunity",
                    "entity_id": "{{step_1.items.0.opportunity_id}}",
                    "file_name": file_name,
                },
            ),
        ]
        where = {
            "entity_type": "Opportunity",
            "entity_id": opp["opportunity_id"],
            "file_name": file_name,
        }
    return Draft(
        "UPLOAD DOCUMENT",
        [turn],
        [exists("document", where, "the document is attached")],
        [allow("document", ["INSERT"], where)],
        [confirms("confirms the file", file_name)],
        actions,
        f"Attached {file_name}.",
    )


def add_note(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    topic = b.rng.choice(
        [
            "prefers email over calls",
            "budget review in January",
            "new procurement contact",
            "asked for a multi-year discount",
        ]
    )
    content = f"Customer {topic}."
    return Draft(
        "ADD NOTE",
        [f"Add a note to {client['name']}: {content}"],
        [
            exists(
                "note",
                {
                    "entity_type": "Client",
                    "entity_id": client["client_id"],
                    "content": {"$icontains": topic},
                },
                "the note is on the client",
            )
        ],
        [allow("note", ["INSERT"], {"entity_type": "Client", "entity_id": client["client_id"]})],
        [confirms("confirms the note", "note", "noted")],
        [
            find_client(client["name"]),
            act(
                "add_note",
                {
                    "entity_type": "Client",
                    "entity_id": "{{step_1.items.0.client_id}}",
                    "content": content,
                },
            ),
        ],
        "Added the note.",
    )


def create_contract(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    opp = b.opportunity(client, stage="Negotiation")
    value = opp["amount"]
    start = b.today + timedelta(days=30)
    end = start + timedelta(days=364)
    args = {
        "client_id": "{{step_1.items.0.client_id}}",
        "opportunity_id": "{{step_2.items.0.opportunity_id}}",
        "status": "Pending",
        "value": value,
        "start_date": start.isoformat(),
        "end_date": end.isoformat(),
    }
    where = {**args, "client_id": client["client_id"], "opportunity_id": opp["opportunity_id"]}
    return Draft(
        "CREATE NEW CONTRACT",
        [
            f"Draft a pending contract for {client['name']} on the {opp['name']} deal, value "
            f"{say_money(b.rng, value)}, running {start.isoformat()} to {end.isoformat()}."
        ],
        [exists("contract", where, "the pending contract exists")],
        [allow("contract", ["INSERT"], where)],
        [confirms("confirms it is pending", "pending")],
        [find_client(client["name"]), find_opportunity(opp["name"]), act("create_contract", args)],
        "Created the pending contract.",
    )


def contract_search(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    contract = b.contract(client)
    return Draft(
        "CONTRACT SEARCH",
        [f"Does {client['name']} have an active contract? What's it worth?"],
        [],
        [],
        [mentions("gives the value", *amounts(contract["value"]))],
        [
            find_client(client["name"]),
            act("contract_search", {"criteria": {"client_id": "{{step_1.items.0.client_id}}"}}),
        ],
        f"Yes, an active contract worth {contract['value']:,}.",
    )


def company_search(b: CaseBuilder, tier: Difficulty) -> Draft:
    industry = b.rng.choice(["Robotics", "Aerospace", "Biotech", "Maritime"])
    rivals = [b.company(type="Competitor", industry=industry) for _ in range(2)]
    b.company(type="Partner", industry=industry)
    return Draft(
        "COMPANY SEARCH",
        [f"Which competitors do we track in {industry}?"],
        [],
        [],
        [mentions(f"names {c['name']}", c["name"]) for c in rivals],
        [act("company_search", {"criteria": {"type": "Competitor", "industry": industry}})],
        "Competitors: " + ", ".join(c["name"] for c in rivals),
    )


def delete_opportunity(b: CaseBuilder, tier: Difficulty) -> Draft:
    client = b.client()
    keep = b.opportunity(client)
    dup = b.opportunity(client, name=f"{keep['name']} (duplicate)")
    return Draft(
        "DELETE OPPORTUNITY",
        [f"Delete the opportunity '{dup['name']}', it's a duplicate."],
        [
            StateAssertion(
                kind="row_absent",
                table="opportunity",
                where={"opportunity_id": dup["opportunity_id"]},
                description="deleted",
            ),
            count(
                "opportunity", {"opportunity_id": keep["opportunity_id"]}, 1, "the original stays"
            ),
        ],
        [allow("opportunity", ["DELETE"], {"opportunity_id": dup["opportunity_id"]})],
        [confirms("confirms the deletion", "deleted", "removed", "delete")],
        [
            find_opportunity(dup["name"]),
            act("delete_opportunity", {"opportunity_id": "{{step_1.items.0.opportunity_id}}"}),
        ],
        "Deleted the duplicate.",
        role="manager",
    )


SUCCESS_BLUEPRINTS: dict[str, Blueprint] = {
    "CREATE NEW OPPORTUNITY": create_opportunity,
    "MODIFY OPPORTUNITY": modify_opportunity,
    "OPPORTUNITY SEARCH": opportunity_search,
    "UPLOAD DOCUMENT": upload_document,
    "CREATE QUOTE": create_quote,
    "VIEW OPPORTUNITY DETAILS": view_opportunity_details,
    "CONTACT SEARCH": contact_search,
    "CLONE OPPORTUNITY": clone_opportunity,
    "SUMMARIZE OPPORTUNITIES": summarize_opportunities,
    "CLIENT SEARCH": client_search,
    "CREATE NEW CLIENT": create_client,
    "CREATE NEW CONTACT": create_contact,
    "CONTRACT SEARCH": contract_search,
    "QUOTE SEARCH": quote_search,
    "CREATE NEW CONTRACT": create_contract,
    "COMPANY SEARCH": company_search,
    "OPPORTUNITY DETAILS": opportunity_details,
    "MODIFY CLIENT": modify_client,
    "MODIFY QUOTE": modify_quote,
    "CANCEL QUOTE": cancel_quote,
    "MODIFY CONTACT": modify_contact,
    "ADD NOTE": add_note,
    "COMPARE QUOTE DETAILS": compare_quote_details,
    "COMPARE QUOTES": compare_quotes,
    "DELETE OPPORTUNITY": delete_opportunity,
    "DELETE QUOTE": delete_quote,
    "QUOTE DETAILS": quote_details,
    "QUOTE PREFIXES": quote_prefixes,
}
