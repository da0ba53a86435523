"""Services a command starts for its own duration: a CRM API (and a verifier) on free
local ports, guarded by a key generated for the run.

Commands that need the CRM API over HTTP (importing or checking cases) use
`running_crm_api()` when no running service is given; it serves the same app as
`crmbench serve crm-api`, in a thread of the calling process, and stops it on exit.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from crmbench_clients.serving import serving_in_thread


@contextmanager
def running_crm_api(url: str | None = None) -> Iterator[tuple[str, str]]:
    """A CRM API on 127.0.0.1 for the duration of the block; yields (base_url, admin_key).

    `url` is the database to serve; by default DATABASE_URL or the embedded Postgres.
    The schema is migrated and the world loaded first (idempotent). The admin key is
    generated for this run and never leaves the process.
    """
    from crm_api.app import create_app
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings
    from crmbench.postgres import resolve_database_url

    database_url = url or resolve_database_url()
    admin_key = secrets.token_urlsafe(24)
    settings = CrmApiSettings(database_url=database_url, admin_key=admin_key)
    migrate(database_url, settings.world_seed)
    with serving_in_thread(create_app(settings), "CRM API") as base_url:
        yield base_url, admin_key


@contextmanager
def running_verifier(
    crm_api_url: str,
    admin_key: str,
    corpus_dir: str | None = None,
    *,
    verifier_key: str | None = None,
) -> Iterator[str]:
    """A verifier on 127.0.0.1 reading episodes from `crm_api_url`; yields its base URL.

    Its scoring routes take `verifier_key`, by default the admin key: callers send that.
    Left None, the verifier's own fallback to the admin key applies, so a refusal of a
    weak key names CRMBENCH_ADMIN_KEY rather than CRMBENCH_VERIFIER_KEY.
    """
    from verifier.app import create_app
    from verifier.settings import VerifierSettings

    overrides: dict[str, object] = {
        "crm_api_url": crm_api_url,
        "admin_key": admin_key,
        "verifier_key": verifier_key,
    }
    if corpus_dir is not None:
        overrides["corpus_dir"] = corpus_dir
    settings = VerifierSettings(**overrides)  # type: ignore[arg-type]
    with serving_in_thread(create_app(settings), "verifier") as base_url:
        yield base_url
