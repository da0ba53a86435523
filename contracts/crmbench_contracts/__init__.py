"""crmbench_contracts: the I/O-free models every service shares (cases, rewards)."""
