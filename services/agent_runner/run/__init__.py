"""Run orchestration: run configs, the Postgres queue, episode playing and trace files."""
