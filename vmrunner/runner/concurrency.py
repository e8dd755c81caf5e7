"""Concurrency groups (``concurrency:``): one holder running per group, a bounded queue pending.

GitHub's rules: a group (compared case-insensitively, per repository) lets one job or run
run at a time. A newcomer waits while the group is held; with ``queue: single`` (the default)
at most one waits and a newer arrival cancels the one already waiting; with ``queue: max`` up
to ``QUEUE_MAX`` wait, first in first out, and arrivals beyond that are cancelled. A newcomer
with ``cancel-in-progress`` also stops the holder; the newcomer still waits until the holder
has finished its cleanup and left, so two holders never overlap.

``ConcurrencyGroups`` is the registry: one per ``run_workflow`` call by default, one per
server so that groups span runs. Everything happens on one event loop, so the bookkeeping
needs no locks; a waiter that is cancelled leaves the queue (or hands the group on when it had
just been granted it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmrunner.errors import ConcurrencyCancelled, ConfigError, VmrunnerError
from vmrunner.workflow.evaluation import render_flag, render_text
from vmrunner.workflow.models import Concurrency

#: How many may wait in a group with ``queue: max`` (GitHub's limit).
QUEUE_MAX = 100
#: The contexts a workflow-level and a job-level ``concurrency:`` may use.
WORKFLOW_CONTEXTS = ("github", "inputs", "vars")
JOB_CONTEXTS = ("github", "needs", "strategy", "matrix", "inputs", "vars")


@dataclass(frozen=True, slots=True)
class Claim:
    """An evaluated ``concurrency:``: which group, and how a newcomer treats the others."""

    group: str
    cancel_in_progress: bool = False
    queue: int = 1
    #: Groups are per repository on GitHub; a server may serve several.
    scope: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.scope, self.group.casefold()


def evaluate_claim(
    concurrency: Concurrency | None, contexts: Mapping[str, Any], allowed: Collection[str]
) -> Claim | None:
    """The claim of a ``concurrency:`` with only the ``allowed`` contexts; ``ConfigError`` if it is
    broken."""
    if concurrency is None:
        return None
    scoped = {name: contexts.get(name, {}) for name in allowed}
    try:
        group = render_text(concurrency.group, scoped)
        cancel = render_flag(concurrency.cancel_in_progress, scoped)
    except VmrunnerError as exc:
        raise ConfigError(f"concurrency: {exc}") from exc
    if not group.strip():
        raise ConfigError("concurrency: the group is empty")
    queue = QUEUE_MAX if concurrency.queue == "max" else 1
    if cancel and queue > 1:
        raise ConfigError("concurrency: queue: max cannot be combined with cancel-in-progress")
    github = contexts.get("github")
    scope = str(github.get("repository", "")) if isinstance(github, Mapping) else ""
    return Claim(group, cancel, queue, scope)


@dataclass(eq=False, slots=True)
class _Holder:
    who: str
    stop: Callable[[str], None]
    #: Resolved when a waiting holder is given the group (made in the holder's event loop).
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    stopped: bool = False


@dataclass(slots=True)
class _Group:
    name: str
    running: _Holder | None = None
    pending: deque[_Holder] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class GroupStatistics:
    group: str
    running: str
    pending: tuple[str, ...]


def _ignore(_: str) -> None:
    pass


class ConcurrencyGroups:
    """The groups of every job and run that shares this registry."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], _Group] = {}

    @contextlib.asynccontextmanager
    async def hold(
        self, claim: Claim, who: str, stop: Callable[[str], None],
        waiting: Callable[[str], None] = _ignore,
    ) -> AsyncIterator[None]:
        """Hold ``claim``'s group for the body; waits while another holds it.

        ``stop(reason)`` is called (once) when a newcomer with cancel-in-progress wants the
        group: the holder should cancel itself. ``waiting(message)`` is called when the holder
        has to wait. Raises ``ConcurrencyCancelled`` when a newer arrival takes the pending place.
        """
        holder = await self._acquire(claim, _Holder(who, stop), waiting)
        try:
            yield
        finally:
            self._release(claim.key, holder)

    def statistics(self) -> tuple[GroupStatistics, ...]:
        return tuple(
            GroupStatistics(
                group.name, group.running.who if group.running else "",
                tuple(h.who for h in group.pending),
            )
            for group in self._groups.values()
        )

    async def _acquire(
        self, claim: Claim, holder: _Holder, waiting: Callable[[str], None]
    ) -> _Holder:
        group = self._groups.setdefault(claim.key, _Group(claim.group))
        running = group.running
        if claim.cancel_in_progress and running is not None and not running.stopped:
            running.stopped = True
            running.stop(
                f"cancelled: {holder.who} entered concurrency group '{group.name}' with "
                f"cancel-in-progress"
            )
        if running is None and not group.pending:
            group.running = holder
            return holder
        if len(group.pending) >= claim.queue > 1:
            raise ConcurrencyCancelled(
                f"the queue of concurrency group '{group.name}' is full ({claim.queue} waiting)"
            )
        group.pending.append(holder)
        while len(group.pending) > claim.queue:
            replaced = group.pending.popleft()
            if not replaced.granted.done():  # done: its task was cancelled and is leaving anyway
                replaced.granted.set_exception(
                    ConcurrencyCancelled(
                        f"replaced by {holder.who}, which now waits for concurrency group "
                        f"'{group.name}'"
                    )
                )
        held_by = (
            f"held by {running.who}" if running is not None else "its queue is being handed on"
        )
        waiting(f"waiting for concurrency group '{group.name}' ({held_by})")
        try:
            await holder.granted
        except asyncio.CancelledError:
            self._leave(claim.key, group, holder)
            raise
        return holder

    def _leave(self, key: tuple[str, str], group: _Group, holder: _Holder) -> None:
        """A cancelled waiter gives up its place (or the group, if it had just been granted it)."""
        future = holder.granted
        if future.done() and not future.cancelled():
            # retrieved: a replacement that raced the cancellation is not an error
            future.exception()
        if holder in group.pending:
            group.pending.remove(holder)
            self._drop_if_idle(key, group)
        elif group.running is holder:
            self._release(key, holder)

    def _release(self, key: tuple[str, str], holder: _Holder) -> None:
        group = self._groups.get(key)
        if group is None or group.running is not holder:
            return
        group.running = None
        while group.pending:
            nxt = group.pending.popleft()
            if not nxt.granted.done():  # a cancelled waiter's future is done (cancelled)
                group.running = nxt
                nxt.granted.set_result(None)
                break
        self._drop_if_idle(key, group)

    def _drop_if_idle(self, key: tuple[str, str], group: _Group) -> None:
        if group.running is None and not group.pending and self._groups.get(key) is group:
            del self._groups[key]
