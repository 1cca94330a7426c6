"""The web front end: HTTP API and page (server), self-contained result pages (report)."""
