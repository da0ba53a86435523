"""verifier: scores the state an episode leaves behind against its golden case."""
