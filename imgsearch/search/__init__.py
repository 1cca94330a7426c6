"""Search: query parsing and combination, and ranking against the vector index."""
