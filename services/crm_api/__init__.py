"""crm_api: the CRM sandbox service whose endpoints are an agent's tools."""

__version__ = "0.1.0"
