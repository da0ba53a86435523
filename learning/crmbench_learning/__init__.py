"""The continual-learning loop's own library: embeddings for playbook retrieval (and, as
the loop grows, its memory and retrieval). Sits beside crmbench_clients: it may import
the contracts and crmbench_llm, never a service or the corpus."""
