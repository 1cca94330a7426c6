"""Alembic environment and numbered revisions. Only imgsearch.store runs them."""
