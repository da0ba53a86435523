"""crmbench_corpus: the golden-case generator, its blueprints, and the committed corpus."""
