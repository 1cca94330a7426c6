"""Indexing: scan folders, decode images, embed them in batches, write them to the store."""
