"""The agent tools. Importing this package registers every tool in `registry.TOOLS`."""

from crm_api.tools import (  # noqa: F401  (imported for their registrations)
    attachments,
    clients,
    companies,
    contacts,
    contracts,
    listing,
    opportunities,
    quotes,
)
from crm_api.tools.registry import TOOLS, Tool, ToolKind

__all__ = ["TOOLS", "Tool", "ToolKind"]
