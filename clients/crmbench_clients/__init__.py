"""Typed HTTP clients for the project's services and the helper that serves an app locally.

Every caller of the CRM API or the verifier (the runner, the Gymnasium env, the verifier,
corpus replay and validation, the CL-Bench import, the benchmarks) goes through this
package, so a route or auth change is one edit.
"""

from crmbench_clients.crm_api import (
    CrmApiClient,
    OpenedEpisode,
    SyncCrmApiClient,
    ToolDefinition,
    ToolOutcome,
)
from crmbench_clients.errors import (
    InvalidResponse,
    RequestRefused,
    ServiceError,
    ServiceFailed,
    ServiceTimeout,
    ServiceUnavailable,
)
from crmbench_clients.verifier import SyncVerifierClient, VerifierClient

__all__ = [
    "CrmApiClient",
    "InvalidResponse",
    "OpenedEpisode",
    "RequestRefused",
    "ServiceError",
    "ServiceFailed",
    "ServiceTimeout",
    "ServiceUnavailable",
    "SyncCrmApiClient",
    "SyncVerifierClient",
    "ToolDefinition",
    "ToolOutcome",
    "VerifierClient",
]
