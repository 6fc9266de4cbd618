"""The feature browser (``monosemantic serve``): a FastAPI app over one or more run directories.

- ``state``: the served runs, read-only database connections, the lazily loaded model (one lock)
- ``queries``: what each page shows, as JSON-ready dicts (SQLite, parameterised, paginated)
- ``api``: the JSON API under ``/api/``; ``pages``: the server-rendered pages (Jinja2)
- ``app``: the app factory (token check, security headers, error pages); ``server``: uvicorn
"""
