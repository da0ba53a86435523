"""The world: the deterministic base CRM data set that every episode schema is cloned from.

Same seed, same rows (Faker is pinned); it carries the traps real CRM data has.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, NamedTuple
from urllib.parse import quote as url_quote

from faker import Faker

from crm_api.domain import (
    CLOSED_STAGES,
    ENTITY_TABLES,
    ENTITY_TYPE_TABLES,
    MAX_AMOUNT,
    PRIMARY_KEYS,
    WORLD_DATE,
    ClientStatus,
    CompanyType,
    ContractStatus,
    DocumentEntityType,
    NoteEntityType,
    OpportunityStage,
    QuoteStatus,
)
from crmbench_contracts.canonical import canonical_json

WORLD_SEED: Final[int] = 20251112

Row = dict[str, Any]
_FrozenRow = tuple[tuple[str, Any], ...]
_FrozenTables = tuple[tuple[str, tuple[_FrozenRow, ...]], ...]

# Sizes of the world. Stage and contract-status counts are exact so every value is present.
_N_CLIENTS: Final = 300
_N_CLIENTS_WITHOUT_OPPORTUNITIES: Final = 24
_MAX_OPPORTUNITIES_PER_CLIENT: Final = 5
_STAGE_COUNTS: Final = {
    OpportunityStage.PROSPECTING: 80,
    OpportunityStage.QUALIFICATION: 75,
    OpportunityStage.PROPOSAL: 70,
    OpportunityStage.NEGOTIATION: 60,
    OpportunityStage.CLOSED_WON: 95,
    OpportunityStage.CLOSED_LOST: 70,
}
_COMPANY_TYPE_COUNTS: Final = {
    CompanyType.PARTNER: 24,
    CompanyType.VENDOR: 20,
    CompanyType.COMPETITOR: 16,
}
_N_ACTIVE_CONTRACTS: Final = 55
_N_PENDING_CONTRACTS: Final = 35
_N_EXPIRED_CONTRACTS: Final = 30
_N_EXPIRED_CONTRACTS_WITH_OPPORTUNITY: Final = 12
_N_DOCUMENTS: Final = 200
_N_NOTES: Final = 400
_N_SALES_REPS: Final = 6

# Business values stay well inside the schema's limit (MAX_AMOUNT) so edits have headroom.
_MIN_WORLD_AMOUNT: Final = 1_000
_MAX_WORLD_AMOUNT: Final = 2_000_000
assert _MAX_WORLD_AMOUNT <= MAX_AMOUNT
_CENT: Final = Decimal("0.01")
# Approved quotes stay within a sales rep's discount limit; the "deep discount" trap does not.
_MIN_APPROVED_FACTOR: Final = 0.82

_WORLD_START: Final = datetime.combine(WORLD_DATE, time(0), tzinfo=UTC)
_LAST_PAST_DAY: Final = WORLD_DATE - timedelta(days=1)

_PROBABILITIES: Final = {
    OpportunityStage.PROSPECTING: (5, 10, 15, 20),
    OpportunityStage.QUALIFICATION: (20, 25, 30, 40),
    OpportunityStage.PROPOSAL: (40, 50, 60),
    OpportunityStage.NEGOTIATION: (60, 70, 75, 80, 90),
    OpportunityStage.CLOSED_WON: (100,),
    OpportunityStage.CLOSED_LOST: (0,),
}

_INDUSTRIES: Final = (
    "Technology",
    "Healthcare",
    "Manufacturing",
    "Retail",
    "Financial Services",
    "Education",
    "Logistics",
    "Energy",
    "Media",
    "Real Estate",
    "Hospitality",
    "Telecommunications",
    "Construction",
    "Agriculture",
    "Insurance",
    "Non-Profit",
)
_SECTOR_WORDS: Final = (
    "Analytics",
    "Logistics",
    "Manufacturing",
    "Health",
    "Foods",
    "Energy",
    "Systems",
    "Labs",
    "Software",
    "Consulting",
    "Holdings",
    "Industries",
    "Media",
    "Robotics",
    "Capital",
    "Dynamics",
    "Solutions",
    "Networks",
    "Supply",
    "Outfitters",
)
_LEGAL_SUFFIXES: Final = ("Inc", "LLC", "Co", "Group", "Ltd")
# Confusable client names: (suffix A, suffix B) appended to the same surname.
_CONFUSABLE_SUFFIXES: Final = (
    ("Corporation", "Corp"),
    ("Traders", "Trading"),
    ("Systems", "Systems Inc"),
)
_EMAIL_LOCAL_PARTS: Final = ("contact", "info", "sales", "hello", "office")
_TITLES: Final = (
    "CEO",
    "CFO",
    "CTO",
    "COO",
    "VP of Sales",
    "VP of Operations",
    "Head of Procurement",
    "Procurement Manager",
    "IT Director",
    "IT Manager",
    "Operations Manager",
    "Finance Manager",
    "Office Manager",
    "Purchasing Agent",
    "Head of Marketing",
    "Project Manager",
    "Facilities Manager",
    "General Counsel",
)
_CONTACT_REMARKS: Final = (
    "Prefers email over phone.",
    "Main decision maker.",
    "Handles procurement and invoicing.",
    "Technical evaluator; wants a sandbox first.",
    "Signs off on anything above budget.",
    "Best reached on Tuesday mornings.",
    "Executive sponsor.",
)
_PRODUCTS: Final = (
    "Annual Support Renewal",
    "CRM Licenses",
    "Data Platform Migration",
    "Security Audit",
    "Cloud Expansion",
    "Onboarding Services",
    "Analytics Add-on",
    "Fleet Telematics Rollout",
    "ERP Integration",
    "Managed Services",
    "Training Program",
    "Hardware Refresh",
    "Enterprise Upgrade",
    "Marketing Automation",
    "Compliance Package",
    "Premium Support",
    "Warehouse Automation",
    "Customer Portal",
    "Payroll Module",
    "Field Service App",
)
_OPPORTUNITY_REMARKS: Final = (
    "Budget approved for next fiscal year.",
    "Requires security review before signature.",
    "Multi-year deal possible.",
    "Champion changed roles recently.",
    "Procurement wants three competing bids.",
    "Pilot requested before full rollout.",
)
_EVENTS: Final = (
    "the regional user group",
    "a partner webinar",
    "the customer advisory board",
    "the annual trade show",
    "a roundtable lunch",
)
_TOPICS: Final = (
    "IT purchasing",
    "the analytics budget",
    "procurement",
    "security tooling",
    "the support contract",
    "facilities",
)

_CLIENT_NOTES: Final = (
    "Quarterly account review with {contact}; renewal risk looks {risk}.",
    "Asked that invoices go to accounts payable, not to {contact}.",
    "Budget cycle starts in {month}; reach out six weeks before.",
    "Introduced by {partner} at {event}.",
    "{contact} confirmed they are consolidating vendors this year.",
    "Opened an office in {city}; billing address unchanged.",
    "Prefers a single consolidated invoice per quarter.",
    "Payment was {days} days late last cycle; keep an eye on collections.",
)
_CONTACT_NOTES: Final = (
    "Decision maker for {topic}.",
    "Prefers email; do not call before 10am local time.",
    "Met at {event} in {city}.",
    "Left a voicemail on {day}; follow up next week.",
    "Reports to the CFO; influences the budget for {topic}.",
    "Previously worked at {partner}.",
)
_OPEN_OPPORTUNITY_NOTES: Final = (
    "Discovery call done; {seats} seats in scope.",
    "{competitor} is also bidding and leads on price.",
    "Legal review expected before {close_day}.",
    "Champion is {contact}; economic buyer not identified yet.",
    "Customer wants a pilot before committing to {seats} seats.",
    "Security questionnaire sent on {day}.",
)
_WON_OPPORTUNITY_NOTES: Final = (
    "Signed on {close_day}; kickoff with {contact} scheduled.",
    "Won against {competitor} on implementation timeline.",
    "Handed over to customer success after signature on {close_day}.",
)
_LOST_OPPORTUNITY_NOTES: Final = (
    "Lost to {competitor} on price.",
    "Project shelved: budget frozen after a reorganisation.",
    "No decision; {contact} stopped responding.",
    "Closed lost on {close_day}; revisit next fiscal year.",
)
# The first quote note only fits a quote below the opportunity amount.
_QUOTE_NOTES: Final = (
    "Version {version} prepared at {discount}% below the opportunity amount.",
    "Customer asked to split payment into quarterly installments.",
    "Pricing checked with {rep} before sending.",
    "{contact} asked for a three-year price lock.",
    "Includes onboarding and premium support.",
)
_CONTRACT_NOTES: Final = (
    "Auto-renews unless cancelled 60 days before {end_day}.",
    "Net 30 payment terms agreed.",
    "Countersigned copy received from {contact}.",
    "Includes a 5% annual price escalator.",
    "Renewal conversation to start in {month}.",
)

_DOCUMENT_NAMES: Final = {
    DocumentEntityType.CLIENT: (
        "w9-form.pdf",
        "company-logo.png",
        "account-plan.docx",
        "org-chart.pdf",
        "vendor-onboarding-form.pdf",
        "credit-application.pdf",
        "site-photo.jpg",
        "{slug}-overview.pptx",
    ),
    DocumentEntityType.OPPORTUNITY: (
        "proposal-{slug}.pptx",
        "requirements.docx",
        "pricing-model.xlsx",
        "discovery-call-notes.txt",
        "solution-overview.pdf",
        "RFP Response.docx",
        "roi-analysis.xlsx",
        "architecture-diagram.png",
    ),
    DocumentEntityType.QUOTE: (
        "quote-{prefix}-v{version}.pdf",
        "pricing-breakdown-v{version}.xlsx",
        "quote-{prefix}-v{version}-redlined.docx",
    ),
    DocumentEntityType.CONTRACT: (
        "{slug}-msa.pdf",
        "signed-contract-{year}.pdf",
        "order-form.pdf",
        "sow-{slug}.docx",
        "Signed Agreement {year}.pdf",
        "renewal-terms.docx",
    ),
}
_DOCUMENT_WEIGHTS: Final = {
    DocumentEntityType.OPPORTUNITY: 35,
    DocumentEntityType.CONTRACT: 25,
    DocumentEntityType.QUOTE: 25,
    DocumentEntityType.CLIENT: 15,
}
_NOTE_WEIGHTS: Final = {
    NoteEntityType.OPPORTUNITY: 35,
    NoteEntityType.CLIENT: 25,
    NoteEntityType.CONTACT: 15,
    NoteEntityType.QUOTE: 15,
    NoteEntityType.CONTRACT: 10,
}


class _Built(NamedTuple):
    tables: _FrozenTables
    sales_reps: tuple[str, ...]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _timestamp(rng: random.Random, day: date) -> datetime:
    """A UTC timestamp during US business hours on `day`."""
    moment = time(rng.randint(13, 23), rng.randint(0, 59), rng.randint(0, 59))
    return datetime.combine(day, moment, tzinfo=UTC)


def _random_day(rng: random.Random, first: date, last: date) -> date:
    if last <= first:
        return last
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _money(value: float) -> Decimal:
    clamped = min(max(value, _MIN_WORLD_AMOUNT), _MAX_WORLD_AMOUNT)
    return Decimal(f"{clamped:.2f}").quantize(_CENT)


def _round_amount(value: float) -> Decimal:
    """A deal-sized amount: rounded to 10, 100 or 1,000 depending on its size."""
    step = 10 if value < 10_000 else 100 if value < 100_000 else 1_000
    return _money(round(value / step) * step)


def _long_date(day: date) -> str:
    return f"{day:%B} {day.day}, {day.year}"


class _WorldBuilder:
    """Builds the tables in dependency order; side indexes keep the rows consistent."""

    def __init__(self, seed: int) -> None:
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.rng = random.Random(seed)
        self.sales_reps: list[str] = []
        self.tables: dict[str, list[Row]] = {name: [] for name in ENTITY_TABLES}
        self.client_by_id: dict[str, Row] = {}
        self.client_domain: dict[str, str] = {}
        self.contacts_by_client: dict[str, list[Row]] = {}
        self.opportunity_by_id: dict[str, Row] = {}
        self.opportunities_by_client: dict[str, list[Row]] = {}
        self.quotes_by_opportunity: dict[str, list[Row]] = {}
        self.contracts_by_client: dict[str, list[Row]] = {}
        # Days on which activity (notes, uploads) on an entity is plausible.
        self.activity: dict[tuple[str, str], tuple[date, date]] = {}
        self.used_names: set[str] = set()  # membership only: never iterated
        self.confusable_client_ids: list[str] = []

    # ids, names, people -------------------------------------------------------------

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rep(self) -> str:
        return self.rng.choice(self.sales_reps)

    def address(self) -> str:
        fake = self.fake
        state = fake.state_abbr(include_territories=False, include_freely_associated_states=False)
        return f"{fake.street_address()}, {fake.city()}, {state} {fake.zipcode()}"

    def organisation_name(self) -> str:
        """A company name not used yet by any client or company."""
        while True:
            style = self.rng.random()
            if style < 0.55:
                name = self.fake.company()
            elif style < 0.8:
                name = f"{self.fake.last_name()} {self.rng.choice(_SECTOR_WORDS)}"
            else:
                sector = self.rng.choice(_SECTOR_WORDS)
                name = f"{self.fake.last_name()} {sector} {self.rng.choice(_LEGAL_SUFFIXES)}"
            if name.lower() not in self.used_names:
                self.used_names.add(name.lower())
                return name

    def contact_name(self, client_id: str) -> str:
        contacts = self.contacts_by_client[client_id]
        contact = self.rng.choice(contacts)
        return f"{contact['first_name']} {contact['last_name']}"

    def names_of(self, company_type: CompanyType) -> list[str]:
        return [row["name"] for row in self.tables["company"] if row["type"] == company_type]

    def activity_window(self, first: date, last: date) -> tuple[date, date]:
        last = min(last, _LAST_PAST_DAY)
        return (min(first, last), last)

    # tables -------------------------------------------------------------------------

    def build_sales_reps(self) -> None:
        while len(self.sales_reps) < _N_SALES_REPS:
            name = f"{self.fake.first_name()} {self.fake.last_name()}"
            if name not in self.sales_reps:
                self.sales_reps.append(name)

    def build_clients(self) -> None:
        n_confusable = 2 * len(_CONFUSABLE_SUFFIXES)
        names = [self.organisation_name() for _ in range(_N_CLIENTS - n_confusable)]
        # Trap: pairs of clients whose names differ only by a suffix.
        for suffix_a, suffix_b in _CONFUSABLE_SUFFIXES:
            while True:
                surname = self.fake.last_name()
                pair = [f"{surname} {suffix_a}", f"{surname} {suffix_b}"]
                if not any(name.lower() in self.used_names for name in pair):
                    break
            self.used_names.update(name.lower() for name in pair)
            names.extend(pair)
        used_domains: set[str] = set()
        for position, name in enumerate(names):
            base = _slug(name)
            domain, suffix = base, 2
            while domain in used_domains:
                domain, suffix = f"{base}-{suffix}", suffix + 1
            used_domains.add(domain)
            domain = f"{domain}.example.com"
            created_day = WORLD_DATE - timedelta(days=self.rng.randint(30, 1800))
            client: Row = {
                "client_id": self.new_id(),
                "name": name,
                "industry": self.rng.choice(_INDUSTRIES),
                "email": f"{self.rng.choice(_EMAIL_LOCAL_PARTS)}@{domain}",
                "phone": self.fake.phone_number(),
                "address": self.address(),
                "status": ClientStatus.PROSPECT.value,  # settled once deals and contracts exist
                "created_date": _timestamp(self.rng, created_day),
                "owner": self.rep(),
            }
            self.tables["client"].append(client)
            self.client_by_id[client["client_id"]] = client
            self.client_domain[client["client_id"]] = domain
            if position >= len(names) - n_confusable:
                self.confusable_client_ids.append(client["client_id"])
            self.activity[("Client", client["client_id"])] = self.activity_window(
                created_day, _LAST_PAST_DAY
            )

    def build_contacts(self) -> None:
        used_emails: set[str] = set()
        for client in self.tables["client"]:
            contacts: list[Row] = []
            for _ in range(self.rng.choices((1, 2, 3, 4), weights=(3, 4, 3, 2))[0]):
                first, last = self.fake.first_name(), self.fake.last_name()
                email = None
                if self.rng.random() < 0.85:
                    local = f"{_slug(first)}.{_slug(last)}".replace("-", "")
                    email, n = f"{local}@{self.client_domain[client['client_id']]}", 2
                    while email in used_emails:
                        email, n = f"{local}{n}@{self.client_domain[client['client_id']]}", n + 1
                    used_emails.add(email)
                contact: Row = {
                    "contact_id": self.new_id(),
                    "first_name": first,
                    "last_name": last,
                    "title": self.rng.choice(_TITLES),
                    "email": email,
                    "phone": self.fake.phone_number() if self.rng.random() < 0.7 else None,
                    "client_id": client["client_id"],
                    "notes": self.rng.choice(_CONTACT_REMARKS) if self.rng.random() < 0.2 else None,
                }
                contacts.append(contact)
                self.tables["contact"].append(contact)
                self.activity[("Contact", contact["contact_id"])] = self.activity[
                    ("Client", client["client_id"])
                ]
            self.contacts_by_client[client["client_id"]] = contacts

    def build_opportunities(self) -> None:
        clients = self.tables["client"]
        confusable = set(self.confusable_client_ids)  # they all get deals: the trap bites
        candidates = [row["client_id"] for row in clients if row["client_id"] not in confusable]
        without = set(self.rng.sample(candidates, _N_CLIENTS_WITHOUT_OPPORTUNITIES))
        counts = {row["client_id"]: 1 for row in clients if row["client_id"] not in without}
        eligible = list(counts)
        remaining = sum(_STAGE_COUNTS.values()) - len(eligible)
        while remaining:
            client_id = self.rng.choice(eligible)
            if counts[client_id] < _MAX_OPPORTUNITIES_PER_CLIENT:
                counts[client_id] += 1
                remaining -= 1
        stages = [stage for stage, n in _STAGE_COUNTS.items() for _ in range(n)]
        self.rng.shuffle(stages)
        next_stage = iter(stages)
        for client_id, count in counts.items():
            client = self.client_by_id[client_id]
            created_day: date = client["created_date"].date()
            days_known = (WORLD_DATE - created_day).days
            for product in self.rng.sample(_PRODUCTS, count):
                stage = next(next_stage)
                if stage in CLOSED_STAGES:
                    close_day = WORLD_DATE - timedelta(
                        days=self.rng.randint(1, max(1, min(540, days_known - 1)))
                    )
                    window = self.activity_window(
                        max(created_day, close_day - timedelta(days=120)),
                        close_day + timedelta(days=30),
                    )
                else:
                    close_day = WORLD_DATE + timedelta(days=self.rng.randint(14, 365))
                    window = self.activity_window(
                        max(created_day, WORLD_DATE - timedelta(days=150)), _LAST_PAST_DAY
                    )
                amount = math.exp(self.rng.uniform(math.log(2_000), math.log(_MAX_WORLD_AMOUNT)))
                opportunity: Row = {
                    "opportunity_id": self.new_id(),
                    "name": f"{client['name']} - {product}",
                    "client_id": client_id,
                    "stage": stage.value,
                    "amount": _round_amount(amount),
                    "close_date": close_day,
                    "owner": client["owner"] if self.rng.random() < 0.8 else self.rep(),
                    "probability": self.rng.choice(_PROBABILITIES[stage]),
                    "notes": (
                        self.rng.choice(_OPPORTUNITY_REMARKS) if self.rng.random() < 0.35 else None
                    ),
                }
                self.tables["opportunity"].append(opportunity)
                self.opportunity_by_id[opportunity["opportunity_id"]] = opportunity
                self.opportunities_by_client.setdefault(client_id, []).append(opportunity)
                self.activity[("Opportunity", opportunity["opportunity_id"])] = window

    def opportunities_in(self, stage: OpportunityStage) -> list[Row]:
        return [row for row in self.tables["opportunity"] if row["stage"] == stage]

    def quote_statuses(self, stage: OpportunityStage, versions: int) -> list[QuoteStatus]:
        superseded = [
            self.rng.choice((QuoteStatus.REJECTED, QuoteStatus.CANCELED))
            for _ in range(versions - 1)
        ]
        if stage == OpportunityStage.PROPOSAL:
            last = self.rng.choices((QuoteStatus.DRAFT, QuoteStatus.SENT), weights=(2, 3))[0]
        elif stage == OpportunityStage.NEGOTIATION:
            last = self.rng.choices(
                (QuoteStatus.SENT, QuoteStatus.APPROVED, QuoteStatus.DRAFT), weights=(5, 3, 2)
            )[0]
        elif stage == OpportunityStage.CLOSED_WON:
            last = QuoteStatus.APPROVED
        else:
            last = self.rng.choices((QuoteStatus.REJECTED, QuoteStatus.CANCELED), weights=(3, 2))[0]
        return [*superseded, last]

    def build_quotes(self) -> None:
        won = self.opportunities_in(OpportunityStage.CLOSED_WON)
        lost = self.opportunities_in(OpportunityStage.CLOSED_LOST)
        negotiation = self.opportunities_in(OpportunityStage.NEGOTIATION)
        # Traps: closed deals whose quotes were never cleaned up, and Sent quotes whose
        # discount exceeds what a sales rep may approve.
        forgotten_draft = {row["opportunity_id"] for row in self.rng.sample(won, 2)}
        still_sent = {row["opportunity_id"] for row in self.rng.sample(lost, 2)}
        deep_discount = {row["opportunity_id"] for row in self.rng.sample(negotiation, 3)}
        quoted_stages = (
            OpportunityStage.PROPOSAL,
            OpportunityStage.NEGOTIATION,
            OpportunityStage.CLOSED_WON,
            OpportunityStage.CLOSED_LOST,
        )
        for opportunity in self.tables["opportunity"]:
            stage = OpportunityStage(opportunity["stage"])
            opportunity_id = opportunity["opportunity_id"]
            if stage not in quoted_stages:
                continue
            if (
                stage == OpportunityStage.CLOSED_LOST
                and opportunity_id not in still_sent
                and self.rng.random() < 0.5
            ):
                continue  # lost before a proposal was made
            versions = self.rng.choice(
                {
                    OpportunityStage.PROPOSAL: (1, 1, 1, 2),
                    OpportunityStage.NEGOTIATION: (1, 2, 2, 3),
                    OpportunityStage.CLOSED_WON: (1, 1, 2, 3),
                    OpportunityStage.CLOSED_LOST: (1, 1, 2),
                }[stage]
            )
            statuses = self.quote_statuses(stage, versions)
            if opportunity_id in forgotten_draft:
                statuses.append(QuoteStatus.DRAFT)
            elif opportunity_id in still_sent or opportunity_id in deep_discount:
                statuses[-1] = QuoteStatus.SENT
            self.add_quotes(opportunity, statuses, deep_discount=opportunity_id in deep_discount)

    def add_quotes(
        self, opportunity: Row, statuses: list[QuoteStatus], deep_discount: bool
    ) -> None:
        client = self.client_by_id[opportunity["client_id"]]
        created_day: date = client["created_date"].date()
        if opportunity["stage"] in CLOSED_STAGES:
            last_day: date = opportunity["close_date"]
        else:
            last_day = _LAST_PAST_DAY
        first_day = max(created_day, last_day - timedelta(days=90))
        stamps = sorted(
            _timestamp(self.rng, _random_day(self.rng, first_day, last_day)) for _ in statuses
        )
        style = self.rng.choices(("year", "QT", "EST", "PRO"), weights=(14, 3, 2, 1))[0]
        prefix = f"Q-{stamps[0].year}" if style == "year" else style
        base = float(opportunity["amount"])
        factor = self.rng.uniform(0.95, 1.08)
        quotes: list[Row] = []
        for index, (status, created) in enumerate(zip(statuses, stamps, strict=True)):
            if index:
                factor *= self.rng.uniform(0.90, 0.98)
            factor = max(factor, _MIN_APPROVED_FACTOR)
            if deep_discount and index == len(statuses) - 1:
                factor = self.rng.uniform(0.70, 0.78)
            quote: Row = {
                "quote_id": self.new_id(),
                "opportunity_id": opportunity["opportunity_id"],
                "version": str(index + 1),
                "amount": _money(base * factor),
                "status": status.value,
                "valid_until": created.date() + timedelta(days=self.rng.choice((30, 45, 60, 90))),
                "created_date": created,
                "quote_prefix": prefix,
            }
            quotes.append(quote)
            self.tables["quote"].append(quote)
            self.activity[("Quote", quote["quote_id"])] = self.activity_window(
                created.date(), created.date() + timedelta(days=30)
            )
        self.quotes_by_opportunity[opportunity["opportunity_id"]] = quotes

    def approved_amount(self, opportunity: Row) -> Decimal:
        for quote in self.quotes_by_opportunity.get(opportunity["opportunity_id"], []):
            if quote["status"] == QuoteStatus.APPROVED:
                amount: Decimal = quote["amount"]
                return amount
        fallback: Decimal = opportunity["amount"]
        return fallback

    def add_contract(
        self,
        client_id: str,
        opportunity: Row | None,
        status: ContractStatus,
        start: date,
        years: int,
        value: Decimal,
    ) -> None:
        contract_id = self.new_id()
        end = _add_years(start, years) - timedelta(days=1)
        contract: Row = {
            "contract_id": contract_id,
            "client_id": client_id,
            "opportunity_id": opportunity["opportunity_id"] if opportunity else None,
            "start_date": start,
            "end_date": end,
            "value": value,
            "status": status.value,
            "document_url": f"https://docs.example.com/contracts/{contract_id}.pdf",
        }
        self.tables["contract"].append(contract)
        self.contracts_by_client.setdefault(client_id, []).append(contract)
        created_day: date = self.client_by_id[client_id]["created_date"].date()
        if status == ContractStatus.PENDING:
            first = WORLD_DATE - timedelta(days=45)
        else:
            first = start - timedelta(days=14)
        self.activity[("Contract", contract_id)] = self.activity_window(
            max(first, created_day), start + timedelta(days=60)
        )

    def build_contracts(self) -> None:
        won = self.opportunities_in(OpportunityStage.CLOSED_WON)
        # A one-year term starting shortly after an old win has run out by the world date.
        old_wins = [row for row in won if row["close_date"] <= WORLD_DATE - timedelta(days=400)]
        expired_wins = self.rng.sample(
            old_wins, min(len(old_wins), _N_EXPIRED_CONTRACTS_WITH_OPPORTUNITY)
        )
        for opportunity in expired_wins:
            start = opportunity["close_date"] + timedelta(days=self.rng.randint(1, 30))
            self.add_contract(
                opportunity["client_id"],
                opportunity,
                ContractStatus.EXPIRED,
                start,
                1,
                self.approved_amount(opportunity),
            )
        expired_ids = {row["opportunity_id"] for row in expired_wins}
        active_candidates = [row for row in won if row["opportunity_id"] not in expired_ids]
        for opportunity in self.rng.sample(active_candidates, _N_ACTIVE_CONTRACTS):
            start = min(
                opportunity["close_date"] + timedelta(days=self.rng.randint(1, 30)), WORLD_DATE
            )
            years = self.rng.choice((1, 1, 2, 3))
            while _add_years(start, years) - timedelta(days=1) <= WORLD_DATE:
                years += 1
            self.add_contract(
                opportunity["client_id"],
                opportunity,
                ContractStatus.ACTIVE,
                start,
                years,
                self.approved_amount(opportunity),
            )
        negotiation = self.opportunities_in(OpportunityStage.NEGOTIATION)
        proposal = self.opportunities_in(OpportunityStage.PROPOSAL)
        n_negotiation = _N_PENDING_CONTRACTS * 2 // 3
        pending = [
            *self.rng.sample(negotiation, n_negotiation),
            *self.rng.sample(proposal, _N_PENDING_CONTRACTS - n_negotiation),
        ]
        for opportunity in pending:
            start = WORLD_DATE + timedelta(days=self.rng.randint(14, 120))
            self.add_contract(
                opportunity["client_id"],
                opportunity,
                ContractStatus.PENDING,
                start,
                self.rng.choice((1, 2, 3)),
                opportunity["amount"],
            )
        # Legacy contracts signed before the deals in the CRM; they have no opportunity.
        long_known = [
            row
            for row in self.tables["client"]
            if (WORLD_DATE - row["created_date"].date()).days >= 400
        ]
        legacy = _N_EXPIRED_CONTRACTS - len(expired_wins)
        for client in self.rng.sample(long_known, legacy):
            created_day: date = client["created_date"].date()
            start = _random_day(self.rng, created_day, WORLD_DATE - timedelta(days=400))
            value = math.exp(self.rng.uniform(math.log(5_000), math.log(500_000)))
            self.add_contract(
                client["client_id"], None, ContractStatus.EXPIRED, start, 1, _round_amount(value)
            )

    def settle_client_statuses(self) -> None:
        for client in self.tables["client"]:
            client_id = client["client_id"]
            stages = {row["stage"] for row in self.opportunities_by_client.get(client_id, [])}
            contracts = {row["status"] for row in self.contracts_by_client.get(client_id, [])}
            if OpportunityStage.CLOSED_WON in stages or ContractStatus.ACTIVE in contracts:
                status = ClientStatus.ACTIVE
            elif stages - CLOSED_STAGES or ContractStatus.PENDING in contracts:
                status = self.rng.choices(
                    (ClientStatus.ACTIVE, ClientStatus.PROSPECT), weights=(35, 65)
                )[0]
            elif stages or contracts:
                status = self.rng.choices(
                    (ClientStatus.INACTIVE, ClientStatus.PROSPECT), weights=(60, 40)
                )[0]
            else:
                status = self.rng.choices(
                    (ClientStatus.PROSPECT, ClientStatus.INACTIVE), weights=(75, 25)
                )[0]
            client["status"] = status.value

    def build_companies(self) -> None:
        types = [kind for kind, n in _COMPANY_TYPE_COUNTS.items() for _ in range(n)]
        self.rng.shuffle(types)
        contact_ids = [row["contact_id"] for row in self.tables["contact"]]
        companies: list[Row] = []
        for kind in types:
            size = (
                self.rng.randint(0, 1) if kind == CompanyType.COMPETITOR else self.rng.randint(0, 3)
            )
            companies.append(
                {
                    "company_id": self.new_id(),
                    "name": self.organisation_name(),
                    "type": kind.value,
                    "industry": self.rng.choice(_INDUSTRIES),
                    "address": self.address(),
                    "contacts": self.rng.sample(contact_ids, size),
                }
            )
        # Trap: the same person listed at two companies (a consultant, a job change).
        for contact_id in self.rng.sample(contact_ids, 2):
            for company in self.rng.sample(companies, 2):
                if contact_id not in company["contacts"]:
                    company["contacts"].append(contact_id)
        for company in companies:
            company["contacts"] = sorted(company["contacts"])
        self.tables["company"] = companies

    def pick_entity(self, entity_type: str) -> Row:
        return self.rng.choice(self.tables[ENTITY_TYPE_TABLES[entity_type]])

    def client_of(self, entity_type: str, row: Row) -> Row:
        if entity_type == "Quote":
            row = self.opportunity_by_id[row["opportunity_id"]]
        if entity_type == "Client":
            return row
        return self.client_by_id[row["client_id"]]

    def activity_stamp(self, entity_type: str, entity_id: str) -> datetime:
        first, last = self.activity[(entity_type, entity_id)]
        stamp = _timestamp(self.rng, _random_day(self.rng, first, last))
        assert stamp < _WORLD_START
        return stamp

    def build_documents(self) -> None:
        kinds = list(_DOCUMENT_WEIGHTS)
        weights = list(_DOCUMENT_WEIGHTS.values())
        for _ in range(_N_DOCUMENTS):
            kind = self.rng.choices(kinds, weights=weights)[0]
            entity = self.pick_entity(kind.value)
            entity_id = entity[PRIMARY_KEYS[ENTITY_TYPE_TABLES[kind.value]]]
            client = self.client_of(kind.value, entity)
            uploaded_at = self.activity_stamp(kind.value, entity_id)
            file_name = self.rng.choice(_DOCUMENT_NAMES[kind]).format(
                slug=_slug(client["name"])[:30].strip("-"),
                prefix=entity.get("quote_prefix") or "Q",
                version=entity.get("version") or "1",
                year=uploaded_at.year,
            )
            document_id = self.new_id()
            self.tables["document"].append(
                {
                    "document_id": document_id,
                    "entity_type": kind.value,
                    "entity_id": entity_id,
                    "file_name": file_name,
                    "uploaded_by": self.rep(),
                    "uploaded_at": uploaded_at,
                    "file_url": (
                        f"https://files.example.com/documents/{document_id}/{url_quote(file_name)}"
                    ),
                }
            )

    def note_content(self, kind: NoteEntityType, entity: Row, client: Row) -> str:
        rng, fake = self.rng, self.fake
        fields: dict[str, object] = {
            "contact": self.contact_name(client["client_id"]),
            "risk": rng.choice(("low", "medium", "high")),
            "month": rng.choice(("January", "March", "April", "July", "September", "October")),
            "partner": rng.choice(self.names_of(CompanyType.PARTNER)),
            "competitor": rng.choice(self.names_of(CompanyType.COMPETITOR)),
            "event": rng.choice(_EVENTS),
            "city": fake.city(),
            "days": rng.randint(10, 60),
            "topic": rng.choice(_TOPICS),
            "day": _long_date(WORLD_DATE - timedelta(days=rng.randint(2, 90))),
            "seats": rng.choice((25, 40, 50, 75, 100, 150, 250, 500)),
            "rep": self.rep(),
        }
        templates: tuple[str, ...]
        if kind == NoteEntityType.CLIENT:
            templates = _CLIENT_NOTES
        elif kind == NoteEntityType.CONTACT:
            templates = _CONTACT_NOTES
        elif kind == NoteEntityType.OPPORTUNITY:
            fields["close_day"] = _long_date(entity["close_date"])
            templates = {
                OpportunityStage.CLOSED_WON: _WON_OPPORTUNITY_NOTES,
                OpportunityStage.CLOSED_LOST: _LOST_OPPORTUNITY_NOTES,
            }.get(OpportunityStage(entity["stage"]), _OPEN_OPPORTUNITY_NOTES)
        elif kind == NoteEntityType.QUOTE:
            opportunity = self.opportunity_by_id[entity["opportunity_id"]]
            discount = 1 - entity["amount"] / opportunity["amount"]
            fields["version"] = entity["version"]
            fields["discount"] = round(float(discount) * 100)
            templates = _QUOTE_NOTES if discount > 0 else _QUOTE_NOTES[1:]
        else:
            fields["end_day"] = _long_date(entity["end_date"])
            templates = _CONTRACT_NOTES
        return rng.choice(templates).format(**fields)

    def build_notes(self) -> None:
        kinds = list(_NOTE_WEIGHTS)
        weights = list(_NOTE_WEIGHTS.values())
        for _ in range(_N_NOTES):
            kind = self.rng.choices(kinds, weights=weights)[0]
            entity = self.pick_entity(kind.value)
            entity_id = entity[PRIMARY_KEYS[ENTITY_TYPE_TABLES[kind.value]]]
            self.tables["note"].append(
                {
                    "note_id": self.new_id(),
                    "entity_type": kind.value,
                    "entity_id": entity_id,
                    "content": self.note_content(kind, entity, self.client_of(kind.value, entity)),
                    "created_by": self.rep(),
                    "created_at": self.activity_stamp(kind.value, entity_id),
                }
            )

    def frozen_rows(self, table: str) -> tuple[_FrozenRow, ...]:
        key = PRIMARY_KEYS[table]
        rows = sorted(self.tables[table], key=lambda row: str(row[key]))
        return tuple(
            tuple((column, tuple(v) if isinstance(v, list) else v) for column, v in row.items())
            for row in rows
        )

    def build(self) -> _Built:
        self.build_sales_reps()
        self.build_clients()
        self.build_contacts()
        self.build_opportunities()
        self.build_quotes()
        self.build_contracts()
        self.settle_client_statuses()
        self.build_companies()
        self.build_documents()
        self.build_notes()
        tables = tuple((name, self.frozen_rows(name)) for name in ENTITY_TABLES)
        return _Built(tables=tables, sales_reps=tuple(self.sales_reps))


@lru_cache(maxsize=4)
def _built(seed: int) -> _Built:
    # Cached in immutable form; build_world hands every caller fresh dicts and lists.
    return _WorldBuilder(seed).build()


def build_world(seed: int = WORLD_SEED) -> dict[str, list[dict[str, Any]]]:
    """The world's rows by table name, each table sorted by primary key.

    Row keys are exactly the table's columns; numeric columns are 2-place Decimals, dates
    `date`, timestamps UTC-aware `datetime`, company.contacts a list of contact ids.
    """
    return {
        name: [
            {column: list(v) if isinstance(v, tuple) else v for column, v in row} for row in rows
        ]
        for name, rows in _built(seed).tables
    }


def sales_reps(seed: int = WORLD_SEED) -> tuple[str, ...]:
    """The fixed sales reps who own, upload and write everything in the world."""
    return _built(seed).sales_reps


@lru_cache(maxsize=4)
def world_version(seed: int = WORLD_SEED) -> str:
    """A short digest of the world's rows: equal versions mean identical worlds."""
    return hashlib.sha256(canonical_json(build_world(seed)).encode("utf-8")).hexdigest()[:16]
