"""The web console: a static page served by ctd next to its API (ctd/web/serve.py)."""
