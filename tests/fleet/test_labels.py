"""Label sets and the queues agents serve: an agent serves a job's queue exactly when the job's
labels are a subset of the agent's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmrunner.errors import ConfigError
from vmrunner.fleet.agent import AgentConfig
from vmrunner.fleet.labels import (
    MAX_AGENT_LABELS,
    agent_queues,
    canonical,
    parse_labels,
    queue_name,
)

LABEL = st.sampled_from(["linux", "kvm", "gpu", "arm64", "Linux", " x64 "])


@given(st.lists(LABEL, min_size=1, max_size=6), st.lists(LABEL, min_size=1, max_size=6))
def test_an_agent_serves_a_job_queue_iff_its_labels_cover_the_job(
    agent: list[str], job: list[str]
) -> None:
    assert (queue_name(job) in agent_queues(agent)) == set(canonical(job)).issubset(
        canonical(agent)
    )


@given(st.permutations(["linux", "kvm", "gpu"]))
def test_queue_names_do_not_depend_on_order_case_or_repeats(labels: list[str]) -> None:
    assert queue_name([*labels, labels[0].upper()]) == "labels:gpu,kvm,linux"


def test_parse_labels() -> None:
    assert parse_labels(" linux, KVM ,,linux") == ("kvm", "linux")


def test_agents_need_one_to_ten_labels() -> None:
    with pytest.raises(ConfigError, match="at least one label"):
        agent_queues([" "])
    with pytest.raises(ConfigError, match=f"at most {MAX_AGENT_LABELS} labels, not 11"):
        agent_queues([f"l{i}" for i in range(11)])


def test_the_fence_must_be_shorter_than_the_stall() -> None:
    with pytest.raises(
        ConfigError,
        match=r"fence interval \(30.0s\) must be shorter than the stall interval \(30.0s\)",
    ):
        AgentConfig(url="postgresql://x", name="h", labels=("linux",), stall=30.0, fence=30.0)
