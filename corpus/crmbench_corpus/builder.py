"""Building blocks of blueprints: deterministic seed rows, names, phrasing and assertions."""

from __future__ import annotations

import random
import uuid
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from crm_api.world import build_world
from crmbench_contracts.cases import (
    Action,
    AllowedChange,
    CommunicationFact,
    StateAssertion,
)

_NAMESPACE = uuid.UUID("5d1b6a3e-6c2f-4f57-9a51-0c9a1f3b7e21")

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
MANAGERS = ["Morgan Lee", "Dana Whitfield"]


@lru_cache(maxsize=1)
def world_client_names() -> frozenset[str]:
    return frozenset(row["name"].lower() for row in build_world()["client"])


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
        self._counts[table] = self._counts.get(table, 0) + 1
        return str(uuid.uuid5(_NAMESPACE, f"{self.case_id}/{table}/{self._counts[table]}"))

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
            "owner": self.rng.choice(REPS),
            "created_date": "2025-01-15T10:00:00+00:00",
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
        closed = stage in ("Closed-Won", "Closed-Lost")
        close = self.today + timedelta(days=-20 if closed else self.rng.randrange(30, 180))
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
        row = {
            "quote_id": self.new_id("quote"),
            "opportunity_id": opportunity["opportunity_id"],
            "version": str(len(existing) + 1),
            "amount": opportunity["amount"],
            "status": "Draft",
            "quote_prefix": "Q",
            "created_date": "2025-10-01T10:00:00+00:00",
            **fields,
        }
        return self._add("quote", row)

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


def mentions(fact: str, *phrases: str, weight: float = 1.0) -> CommunicationFact:
    return CommunicationFact(kind="mentions", fact=fact, any_of=list(phrases), weight=weight)


def act(tool: str, args: dict[str, Any] | None = None, expect_error: str | None = None) -> Action:
    return Action(tool=tool, args=args or {}, expect_error=expect_error)


def ref(table: str, where: dict[str, Any], field: str) -> dict[str, Any]:
    return {"$ref": {"table": table, "where": where, "field": field}}
