"""A small seed with known ids on top of the world, used by the tool-rule tests."""

from __future__ import annotations

from typing import Any

SEED: dict[str, Any] = {
    "client": [
        {
            "client_id": "c-acme",
            "name": "Acme Test Corp",
            "email": "ops@acme-test.com",
            "status": "Active",
        },
        {"client_id": "c-beta", "name": "Beta Test LLC", "email": "hi@beta-test.com"},
    ],
    "contact": [
        {
            "contact_id": "p-jane",
            "first_name": "Jane",
            "last_name": "Doe",
            "client_id": "c-acme",
            "email": "jane.doe@acme-test.com",
        },
    ],
    "opportunity": [
        {
            "opportunity_id": "o-open",
            "name": "Acme expansion",
            "client_id": "c-acme",
            "stage": "Qualification",
            "amount": 100000,
            "probability": 30,
            "close_date": "2026-03-31",
        },
        {
            "opportunity_id": "o-nego",
            "name": "Acme renewal",
            "client_id": "c-acme",
            "stage": "Negotiation",
            "amount": 50000,
            "probability": 60,
        },
        {
            "opportunity_id": "o-ready",
            "name": "Acme platform",
            "client_id": "c-acme",
            "stage": "Negotiation",
            "amount": 80000,
            "probability": 80,
        },
        {
            "opportunity_id": "o-won",
            "name": "Acme pilot",
            "client_id": "c-acme",
            "stage": "Closed-Won",
            "amount": 20000,
            "probability": 100,
        },
        {
            "opportunity_id": "o-lost",
            "name": "Acme lost deal",
            "client_id": "c-acme",
            "stage": "Closed-Lost",
            "amount": 30000,
            "probability": 0,
        },
        {
            "opportunity_id": "o-beta",
            "name": "Beta rollout",
            "client_id": "c-beta",
            "stage": "Proposal",
            "amount": 40000,
        },
    ],
    "quote": [
        {
            "quote_id": "q-approved",
            "opportunity_id": "o-ready",
            "amount": 78000,
            "status": "Approved",
        },
        {
            "quote_id": "q-deep",
            "opportunity_id": "o-nego",
            "version": "1",
            "amount": 35000,
            "status": "Sent",
        },
        {
            "quote_id": "q-fair",
            "opportunity_id": "o-nego",
            "version": "2",
            "amount": 45000,
            "status": "Sent",
        },
        {
            "quote_id": "q-draft",
            "opportunity_id": "o-open",
            "version": "1",
            "amount": 90000,
            "status": "Draft",
        },
        {
            "quote_id": "q-rejected",
            "opportunity_id": "o-open",
            "version": "2",
            "amount": 95000,
            "status": "Rejected",
        },
        {"quote_id": "q-lost-open", "opportunity_id": "o-lost", "amount": 29000, "status": "Sent"},
        {"quote_id": "q-won", "opportunity_id": "o-won", "amount": 20000, "status": "Approved"},
    ],
    "contract": [
        {
            "contract_id": "k-won",
            "client_id": "c-acme",
            "opportunity_id": "o-won",
            "status": "Active",
            "value": 20000,
            "start_date": "2025-10-01",
            "end_date": "2026-09-30",
        },
    ],
}


def payload(role: str = "sales_rep") -> dict[str, Any]:
    return {"today": "2025-11-12", "actor": {"name": "Riley Rep", "role": role}, "seed": SEED}
