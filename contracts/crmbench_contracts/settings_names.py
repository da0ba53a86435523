"""Settings variables that were renamed: what to tell a user who still sets an old name.

I/O-free: callers pass the environment. The pools' shared `CRMBENCH_DB_POOL_SIZE` and
`CRMBENCH_DB_MAX_OVERFLOW` were split so that the CRM API and the agent runner size their
own pools; an old name is ignored, so without a word its tuning would silently be lost.
"""

from __future__ import annotations

from collections.abc import Mapping

RENAMED: dict[str, str] = {
    "CRMBENCH_DB_POOL_SIZE": "CRMBENCH_CRM_API_DB_POOL_SIZE (CRM API) or "
    "CRMBENCH_RUNNER_DB_POOL_SIZE (agent runner)",
    "CRMBENCH_DB_MAX_OVERFLOW": "CRMBENCH_CRM_API_DB_MAX_OVERFLOW",
}
"""Old variable -> the variable(s) that replace it."""


def renamed_variable_warnings(environ: Mapping[str, str]) -> list[str]:
    """One message per old variable set in `environ`, naming its replacement."""
    return [
        f"{old} is no longer read (it is ignored); set {new} instead"
        for old, new in RENAMED.items()
        if old in environ
    ]
