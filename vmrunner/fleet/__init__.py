"""Beyond one host: runs spread over many ``vmrunner agent`` hosts through procrastinate on
PostgreSQL, behind the same small queue interface as the embedded single-host queue.

- ``queue``: the ``JobQueue`` interface and its rows (no PostgreSQL needed to import it).
- ``embedded``: ``EmbeddedQueue``, one host, in this process, runs kept in SQLite.
- ``store``: ``FleetStore``, PostgreSQL + procrastinate: runs, jobs, attempts (the fencing
  token), logs, agents; every step forward in one transaction.
- ``agent``: ``Agent``, one host serving the queues of its labels (``vmrunner agent``).
- ``labels``: canonical label sets and queue names. ``schema``: the tables.
- ``testing``: a throwaway PostgreSQL cluster for tests and benchmarks.

Install the ``fleet`` extra (procrastinate, psycopg) for everything but ``queue`` and ``embedded``.
See docs/fleet.md.
"""
