"""Building blocks of blueprints: deterministic seed rows, names, phrasing and assertions.

Seed rows look like the world's rows (crm_api.world), so that an agent cannot tell the
rows a case added from the template: ids are random-looking version-4 UUIDs (derived
from the case id), owners are the world's sales reps, and created dates, quote prefixes
and validity are drawn the way the world draws them, from the case's own rng.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from crm_api.world import _random_day, _timestamp, build_world, sales_reps
from crmbench_contracts.cases import (
    Action,
    AllowedChange,
    CommunicationFact,
    RowRef,
    StateAssertion,
)

WORLD_TODAY = date(2025, 11, 12)
"""The world's clock (crm_api.domain.WORLD_DATE): every world row was created before it,
and a case's `today` lies on or after it."""

FIRST = [
    "Brightwater",
    "Halcyon",
    "Ironbridge",
    "Lumen",
    "Northgate",
    "Oakridge",
    "Pinecrest",
    "Quarry",
    "Redwood",
    "Silverline",
    "Tidewater",
    "Upland",
    "Vantage",
    "Westbrook",
    "Yellowfin",
    "Zephyr",
    "Amberly",
    "Bluefield",
    "Cobalt",
    "Driftwood",
    "Emberton",
    "Foxhollow",
    "Granite",
    "Harborview",
    "Juniper",
    "Kestrel",
    "Larkspur",
    "Meridian",
    "Nimbus",
    "Orchard",
    "Pemberton",
    "Quillon",
    "Ravenna",
    "Stonegate",
    "Thornbury",
    "Umberfield",
    "Verdant",
    "Willowby",
    "Alder",
    "Birchwood",
    "Calloway",
    "Dunmore",
]
SECOND = [
    "Logistics",
    "Analytics",
    "Foods",
    "Robotics",
    "Health",
    "Outfitters",
    "Energy",
    "Textiles",
    "Media",
    "Labs",
    "Freight",
    "Dental",
    "Brewing",
    "Aerospace",
    "Studios",
    "Pharma",
    "Marine",
    "Software",
    "Builders",
    "Capital",
    "Farms",
    "Optics",
]
INDUSTRIES = [
    "Technology",
    "Healthcare",
    "Manufacturing",
    "Retail",
    "Finance",
    "Logistics",
    "Energy",
    "Education",
    "Media",
    "Hospitality",
]
DEAL_KINDS = [
    "Fleet Renewal",
    "Platform Upgrade",
    "Pilot Program",
    "Annual License",
    "Support Contract",
    "Expansion",
    "Data Migration",
    "Onboarding Package",
    "Security Audit",
    "Training Bundle",
]
TITLES = [
    "CFO",
    "VP Sales",
    "Head of Procurement",
    "CTO",
    "Operations Manager",
    "Director of IT",
    "Office Manager",
    "COO",
]
PEOPLE_FIRST = [
    "Ava",
    "Liam",
    "Noah",
    "Emma",
    "Mia",
    "Lucas",
    "Zoe",
    "Ethan",
    "Nora",
    "Omar",
    "Priya",
    "Kenji",
    "Sofia",
    "Mateo",
    "Leah",
    "Ravi",
    "Ines",
    "Tomas",
]
PEOPLE_LAST = [
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Castillo",
    "Novak",
    "Haddad",
    "Brennan",
    "Kowalski",
    "Ferreira",
    "Nakamura",
    "Osei",
    "Petrov",
    "Quinn",
]
FILE_KINDS = [
    ("signed_contract", "pdf"),
    ("proposal", "docx"),
    ("pricing", "xlsx"),
    ("kickoff_deck", "pptx"),
    ("meeting_notes", "txt"),
    ("site_photo", "png"),
    ("requirements", "pdf"),
    ("sow", "docx"),
]
REPS = ["Riley Chen", "Jordan Patel", "Casey Morgan", "Taylor Brooks", "Alex Rivera"]
"""The users a case acts as (the episode's actor), not owners of rows."""
MANAGERS = ["Morgan Lee", "Dana Whitfield"]
# How the world draws a row's age and a quote's look (crm_api.world: build_clients,
# build_opportunities, add_quotes).
CLIENT_AGE_DAYS = (30, 1800)
CLOSED_DEAL_MAX_AGE_DAYS = 540
QUOTE_WINDOW_DAYS = 90
QUOTE_VALIDITY_DAYS = (30, 45, 60, 90)
QUOTE_PREFIX_STYLES = {"year": 14, "QT": 3, "EST": 2, "PRO": 1}
DEFAULT_QUOTE_PREFIX = "Q"
"""The prefix create_quote gives a quote when none is asked for (crm_api.tools.quotes)."""


@lru_cache(maxsize=1)
def world_client_names() -> frozenset[str]:
    return frozenset(row["name"].lower() for row in build_world()["client"])


@lru_cache(maxsize=1)
def world_owners() -> tuple[str, ...]:
    """The sales reps who own the world's rows; seed rows are owned by them too."""
    return sales_reps()


def _day_of(timestamp: str) -> date:
    return datetime.fromisoformat(timestamp).date()


def money(rng: random.Random, low: int, high: int, step: int = 500) -> int:
    return rng.randrange(low // step, high // step + 1) * step


def say_money(rng: random.Random, amount: float) -> str:
    """How people write an amount: 45000, $45,000, 45k, 45K USD."""
    whole = int(amount)
    options = [f"${whole:,}", f"{whole:,}", f"${whole:,} USD"]
    if whole % 1000 == 0:
        options += [f"{whole // 1000}k", f"${whole // 1000}K"]
    return rng.choice(options)


def say_date(rng: random.Random, value: date, today: date) -> str:
    """A date as a user writes it: ISO, 'March 31, 2026', or relative when it is close."""
    options = [value.isoformat(), value.strftime("%B %d, %Y").replace(" 0", " ")]
    delta = (value - today).days
    if delta == 7:
        options.append("a week from today")
    if delta == 14:
        options.append("two weeks from today")
    if delta == 30:
        options.append("30 days from today")
    return rng.choice(options)


def typo(rng: random.Random, text: str, rate: float = 0.15) -> str:
    """Occasionally a casual slip that does not change a fact (a doubled or dropped letter)."""
    if rng.random() > rate:
        return text
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) > 4]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    j = rng.randrange(1, len(word) - 1)
    words[i] = word[:j] + word[j] + word[j:] if rng.random() < 0.5 else word[:j] + word[j + 1 :]
    return " ".join(words)


class CaseBuilder:
    """Accumulates the seed of one case; ids derive from the case id, names avoid the world's."""

    def __init__(self, case_id: str, rng: random.Random, today: date) -> None:
        self.case_id = case_id
        self.rng = rng
        self.today = today
        self.seed: dict[str, list[dict[str, Any]]] = {}
        self._counts: dict[str, int] = {}
        self._names: set[str] = set()

    def new_id(self, table: str) -> str:
        """A version-4 UUID like the world's, derived from the case id, table and count."""
        self._counts[table] = self._counts.get(table, 0) + 1
        key = f"{self.case_id}/{table}/{self._counts[table]}".encode()
        return str(uuid.UUID(bytes=hashlib.sha256(key).digest()[:16], version=4))

    def _client_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in self.seed["client"] if c["client_id"] == row["client_id"])

    def _add(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        self.seed.setdefault(table, []).append(row)
        return row

    def company_name(self) -> str:
        taken = world_client_names()
        for _ in range(200):
            name = f"{self.rng.choice(FIRST)} {self.rng.choice(SECOND)}"
            lower = name.lower()
            clash = any(lower in t or t in lower for t in taken) or any(
                lower.split()[0] in n for n in self._names
            )
            if not clash:
                self._names.add(lower)
                return name
        raise RuntimeError("no free client name")  # pragma: no cover

    def client(self, **fields: Any) -> dict[str, Any]:
        name = fields.pop("name", None) or self.company_name()
        slug = name.lower().replace(" ", "-")
        row = {
            "client_id": self.new_id("client"),
            "name": name,
            "email": f"contact@{slug}.example.com",
            "industry": self.rng.choice(INDUSTRIES),
            "status": "Active",
            "owner": self.rng.choice(world_owners()),
            "created_date": _timestamp(
                self.rng, WORLD_TODAY - timedelta(days=self.rng.randint(*CLIENT_AGE_DAYS))
            ).isoformat(),
            **fields,
        }
        return self._add("client", row)

    def contact(self, client: dict[str, Any], **fields: Any) -> dict[str, Any]:
        first = fields.pop("first_name", None) or self.rng.choice(PEOPLE_FIRST)
        last = fields.pop("last_name", None) or self.rng.choice(PEOPLE_LAST)
        domain = client["email"].split("@")[1]
        row = {
            "contact_id": self.new_id("contact"),
            "first_name": first,
            "last_name": last,
            "title": self.rng.choice(TITLES),
            "email": f"{first.lower()}.{last.lower()}@{domain}",
            "client_id": client["client_id"],
            **fields,
        }
        return self._add("contact", row)

    def opportunity(self, client: dict[str, Any], **fields: Any) -> dict[str, Any]:
        short = client["name"].split()[0]
        name = fields.pop("name", None) or f"{short} {self.rng.choice(DEAL_KINDS)}"
        stage = fields.pop("stage", "Qualification")
        probability = {
            "Prospecting": 10,
            "Qualification": 25,
            "Proposal": 50,
            "Negotiation": 70,
            "Closed-Won": 100,
            "Closed-Lost": 0,
        }[stage]
        if stage in ("Closed-Won", "Closed-Lost"):  # closed before the world's clock
            known = (WORLD_TODAY - _day_of(client["created_date"])).days
            age = self.rng.randint(1, max(1, min(CLOSED_DEAL_MAX_AGE_DAYS, known - 1)))
            close = WORLD_TODAY - timedelta(days=age)
        else:
            close = self.today + timedelta(days=self.rng.randrange(30, 180))
        row = {
            "opportunity_id": self.new_id("opportunity"),
            "name": name,
            "client_id": client["client_id"],
            "stage": stage,
            "amount": money(self.rng, 10_000, 400_000),
            "close_date": close.isoformat(),
            "owner": client["owner"],
            "probability": probability,
            **fields,
        }
        return self._add("opportunity", row)

    def quote(self, opportunity: dict[str, Any], **fields: Any) -> dict[str, Any]:
        existing = [
            q
            for q in self.seed.get("quote", [])
            if q["opportunity_id"] == opportunity["opportunity_id"]
        ]
        created, valid_until = self._quote_dates(opportunity, existing)
        if existing:  # one prefix per opportunity, as in the world
            prefix = existing[0]["quote_prefix"]
        else:
            styles = list(QUOTE_PREFIX_STYLES)
            style = self.rng.choices(styles, [QUOTE_PREFIX_STYLES[s] for s in styles])[0]
            prefix = f"Q-{created.year}" if style == "year" else style
        row = {
            "quote_id": self.new_id("quote"),
            "opportunity_id": opportunity["opportunity_id"],
            "version": str(len(existing) + 1),
            "amount": opportunity["amount"],
            "status": "Draft",
            "quote_prefix": prefix,
            "created_date": created.isoformat(),
            "valid_until": valid_until.isoformat(),
            **fields,
        }
        return self._add("quote", row)

    def _quote_dates(
        self, opportunity: dict[str, Any], earlier: list[dict[str, Any]]
    ) -> tuple[datetime, date]:
        """A created timestamp in the 90 days before the world's clock (not before the
        client's, nor before the `earlier` versions'), and a validity of 30-90 days that
        still runs a week past the case's today, so that no seeded quote looks expired to
        a careful agent."""
        ahead = (self.today - WORLD_TODAY).days + 8
        validity = self.rng.choice([d for d in QUOTE_VALIDITY_DAYS if d >= ahead])
        last = WORLD_TODAY - timedelta(days=1)
        first = max(
            _day_of(self._client_of(opportunity)["created_date"]),
            last - timedelta(days=QUOTE_WINDOW_DAYS),
            self.today + timedelta(days=7 - validity),
            *(_day_of(q["created_date"]) for q in earlier),
        )
        created = _timestamp(self.rng, _random_day(self.rng, first, last))
        return created, created.date() + timedelta(days=validity)

    def contract(self, client: dict[str, Any], **fields: Any) -> dict[str, Any]:
        row = {
            "contract_id": self.new_id("contract"),
            "client_id": client["client_id"],
            "start_date": (self.today - timedelta(days=90)).isoformat(),
            "end_date": (self.today + timedelta(days=275)).isoformat(),
            "value": money(self.rng, 20_000, 300_000),
            "status": "Active",
            **fields,
        }
        row["document_url"] = f"https://docs.example.com/contracts/{row['contract_id']}.pdf"
        return self._add("contract", row)

    def company(self, **fields: Any) -> dict[str, Any]:
        row = {
            "company_id": self.new_id("company"),
            "name": self.company_name(),
            "type": "Partner",
            "industry": self.rng.choice(INDUSTRIES),
            "contacts": [],
            **fields,
        }
        return self._add("company", row)


# ------------------------------------------------------------------ expectation helpers


def exists(
    table: str, where: dict[str, Any], description: str, weight: float = 1.0
) -> StateAssertion:
    return StateAssertion(
        kind="row_exists",
        table=table,
        where=where,  # type: ignore[arg-type]
        description=description,
        weight=weight,
    )


def absent(table: str, where: dict[str, Any], description: str) -> StateAssertion:
    return StateAssertion(
        kind="row_absent",
        table=table,
        where=where,  # type: ignore[arg-type]
        description=description,
    )


def equals(
    table: str, key: dict[str, Any], field: str, value: Any, description: str
) -> StateAssertion:
    return StateAssertion(
        kind="field_equals",
        table=table,
        where=key,  # type: ignore[arg-type]
        field=field,
        value=value,
        description=description,
    )


def count(table: str, where: dict[str, Any], n: int, description: str) -> StateAssertion:
    return StateAssertion(
        kind="count",
        table=table,
        where=where,  # type: ignore[arg-type]
        count=n,
        description=description,
    )


def allow(
    table: str,
    ops: list[str],
    where: dict[str, Any] | None = None,
    fields: list[str] | None = None,
    max_rows: int | None = 1,
) -> AllowedChange:
    return AllowedChange(
        table=table,
        ops=ops,
        where=where or {},
        fields=fields,  # type: ignore[arg-type]
        max_rows=max_rows,
    )


def mentions(
    fact: str, *phrases: str, weight: float = 1.0, affirmed: bool = False
) -> CommunicationFact:
    """One of `phrases` appears; `affirmed` for a fact that confirms a change (the phrase
    must stand in a clause that does not negate it)."""
    return CommunicationFact(
        kind="mentions", fact=fact, any_of=list(phrases), weight=weight, affirmed=affirmed
    )


def confirms(fact: str, *phrases: str, weight: float = 1.0) -> CommunicationFact:
    """A fact that confirms a change: one of `phrases`, affirmed."""
    return mentions(fact, *phrases, weight=weight, affirmed=True)


def confirms_value(
    fact: str, table: str, where: dict[str, Any], field: str, weight: float = 1.0
) -> CommunicationFact:
    """The reply affirms the value `field` has in the final state (for a value the agent
    chooses, such as a rounded probability)."""
    return CommunicationFact(
        kind="mentions_value",
        fact=fact,
        ref=RowRef(table=table, where=where, field=field),  # type: ignore[arg-type]
        weight=weight,
        affirmed=True,
    )


def reason(
    fact: str,
    rule: str,
    *specific: str,
    subject: list[str] | None = None,
    weight: float = 2.0,
) -> CommunicationFact:
    """The reply gives the reason of failure category `rule` in words the offline lexicon
    knows (crmbench_contracts.replies); `specific` are phrases that only this case's
    explanation holds (the other client's name), `subject` what it must name besides."""
    return CommunicationFact(
        kind="reason",
        fact=fact,
        rule=rule,
        any_of=list(specific),
        subject_any=subject or [],
        weight=weight,
    )


def act(tool: str, args: dict[str, Any] | None = None, expect_error: str | None = None) -> Action:
    return Action(tool=tool, args=args or {}, expect_error=expect_error)


def ref(table: str, where: dict[str, Any], field: str) -> dict[str, Any]:
    return {"$ref": {"table": table, "where": where, "field": field}}
