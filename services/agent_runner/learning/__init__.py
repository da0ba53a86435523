"""The runner's side of the learning loop: the shared playbook memory (`memory`)."""
