"""crmbench: the command-line front end of crm-bench and its process-level helpers."""
