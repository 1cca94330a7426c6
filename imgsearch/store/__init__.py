"""Persistence: SQLite through SQLAlchemy (the source of truth) and FAISS (a cache of the vectors)."""
