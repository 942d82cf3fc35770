"""The web service: a run behind an HTTP API and a web page (FastAPI)."""
