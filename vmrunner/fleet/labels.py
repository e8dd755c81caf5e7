"""``runs-on`` label sets and the procrastinate queues they map to.

Each distinct label set is one queue, named canonically (``labels:kvm,linux``: sorted, no
duplicates), so the same set always meets the same agents. An agent serves every queue whose
label set is a subset of its own labels; it enumerates those subsets when it starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from vmrunner.errors import ConfigError

QUEUE_PREFIX = "labels:"
#: An agent with more labels than this would serve too many queues (2^n - 1).
MAX_AGENT_LABELS = 10


def canonical(labels: Iterable[str]) -> tuple[str, ...]:
    """The sorted set of non-empty labels, lower-cased like GitHub compares them."""
    return tuple(sorted({label.strip().lower() for label in labels if label.strip()}))


def queue_name(labels: Iterable[str]) -> str:
    return QUEUE_PREFIX + ",".join(canonical(labels))


def agent_queues(labels: Iterable[str]) -> list[str]:
    """Every queue an agent with ``labels`` serves: one per non-empty subset."""
    own = canonical(labels)
    if not own:
        raise ConfigError("an agent needs at least one label (--labels linux,kvm)")
    if len(own) > MAX_AGENT_LABELS:
        raise ConfigError(f"an agent may have at most {MAX_AGENT_LABELS} labels, not {len(own)}")
    return [
        queue_name(subset)
        for size in range(1, len(own) + 1)
        for subset in itertools.combinations(own, size)
    ]


def parse_labels(text: str) -> tuple[str, ...]:
    """``linux,kvm`` (the CLI's form) as a canonical label set."""
    return canonical(text.split(","))
