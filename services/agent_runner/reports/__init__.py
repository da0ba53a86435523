"""Reports computed from a run's traces: reading them, statistics, rendering, Atlas export."""
