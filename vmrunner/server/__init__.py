"""``vmrunner serve``: GitHub webhooks in, runs in machines, results back to GitHub.

- ``signatures``: HMAC-SHA256 of the raw body, checked in constant time.
- ``config``: settings (TOML/YAML file and flags) and the repositories served.
- ``state``: deliveries, the run queue and owned comments in SQLite.
- ``mirrors``: ``git clone --mirror`` caches; the workflows of one commit.
- ``service``: the engine (dispatcher, queue, runs, drain, restart recovery).
- ``github`` and ``reporting``: commit statuses and the pull request comment.
- ``metrics``: Prometheus; ``app``: the FastAPI routes and lifespan; ``serving``: uvicorn with a
drain.
- ``testing``: a fake GitHub API and a helper serving any app on a loopback port.
"""
