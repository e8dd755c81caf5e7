"""Prometheus metrics of one server, in a registry of its own (two servers in one process never
mix).

Counters and histograms are fed by the run events (``MetricsSink``); gauges of machines and
sessions are read from ``statistics()`` at scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vmrunner.reports.events import (
    Event,
    JobQueued,
    JobStarted,
    RunFinished,
    SnapshotRestored,
    SnapshotTaken,
)

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "vmrunner_webhooks",
            "Webhook deliveries by event and outcome.",
            ["event", "outcome"],
            registry=r,
        )
        self.runs = Counter(
            "vmrunner_runs", "Finished workflow runs by conclusion.", ["conclusion"], registry=r
        )
        self.job_start_latency = Histogram(
            "vmrunner_job_start_latency_seconds",
            "From a job being queued to its machine being ready.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.allocation = Histogram(
            "vmrunner_allocation_seconds",
            "Waiting for a slot plus allocating the machine, per job.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshots = Histogram(
            "vmrunner_snapshot_seconds",
            "Snapshot durations.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queued = Gauge("vmrunner_runs_queued", "Runs waiting for a slot.", registry=r)
        self.running = Gauge("vmrunner_runs_running", "Runs in progress.", registry=r)
        self.machines_idle = Gauge(
            "vmrunner_machines_idle", "Warm machines waiting in the pool.", registry=r
        )
        self.machines_busy = Gauge(
            "vmrunner_machines_busy", "Machines held by sessions.", registry=r
        )
        self.sessions_waiting = Gauge(
            "vmrunner_sessions_waiting", "Jobs waiting for a session slot.", registry=r
        )
        self.github_requests = Gauge(
            "vmrunner_github_requests", "Requests made to the GitHub API.", registry=r
        )
        self.github_failures = Gauge(
            "vmrunner_github_failures", "GitHub API requests that failed.", registry=r
        )
        self._refresh: list[Callable[[], None]] = []

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        self._refresh.append(refresh)

    def render(self) -> bytes:
        for refresh in self._refresh:
            refresh()
        return generate_latest(self.registry)


class MetricsSink:
    """An ``EventSink`` feeding one run's events into ``Metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._queued: dict[str, float] = {}

    def emit(self, event: Event) -> None:
        if isinstance(event, JobQueued):
            self._queued.setdefault(event.job_key, event.time)
        elif isinstance(event, JobStarted):
            queued = self._queued.pop(event.job_key, None)
            if queued is not None:
                self.metrics.job_start_latency.observe(max(0.0, event.time - queued))
            self.metrics.allocation.observe(event.allocation_seconds)
        elif isinstance(event, SnapshotTaken):
            self.metrics.snapshots.labels("take").observe(event.duration)
        elif isinstance(event, SnapshotRestored):
            self.metrics.snapshots.labels("restore").observe(event.duration)
        elif isinstance(event, RunFinished):
            self.metrics.runs.labels(event.conclusion).inc()
