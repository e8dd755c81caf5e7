"""Transient session states (executing, paused) are written with the next durable transition."""

from __future__ import annotations

from vmrunner.machines.base import MachineSpec
from vmrunner.machines.providers import get_provider
from vmrunner.sessions import MAX_UNSAVED_TRANSITIONS, SessionManager, SessionState


async def test_commands_cost_no_write_until_a_durable_state_and_nothing_is_lost() -> None:
    provider = get_provider("sandbox")
    try:
        async with SessionManager(provider, limit=1) as manager:
            async with manager.open(MachineSpec()) as session:
                for _ in range(3):
                    await session.exec(["true"])
                stored = [t.state for t in manager.store.transitions(session.id)]
                assert stored == ["initializing", "active"]  # the six command transitions wait
                row = manager.store.session(session.id)
                assert row is not None
                assert row.state == "active"
                for _ in range(MAX_UNSAVED_TRANSITIONS):
                    await session.exec(["true"])
                # A long job does not keep them all in memory: they were written in a batch.
                assert len(manager.store.transitions(session.id)) > 2
            memory = [(t.state.value, t.at, t.note) for t in session.transitions]
            stored_all = [(t.state, t.at, t.note) for t in manager.store.transitions(session.id)]
            assert stored_all == memory
            assert memory[-1][0] == SessionState.RELEASED.value
    finally:
        await provider.aclose()
