"""Episodes: isolated copies of the CRM (one Postgres schema each), their routes, rules and SQL.

`routes` (HTTP) -> `service` (the rules, `EpisodeManager`) -> `repository` (every SQL
statement); `schemas` holds the request and response models.
"""

from crm_api.episodes.dependencies import Credentials, bearer_token
from crm_api.episodes.routes import router
from crm_api.episodes.service import EpisodeManager

__all__ = ["Credentials", "EpisodeManager", "bearer_token", "router"]
