"""The ``on:`` section: parsing with precise problems, and matching real GitHub webhook payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import shared_dir
from vmrunner.errors import ConfigError
from vmrunner.workflow.triggers import (
    ACTIVITY_TYPES,
    DEFAULT_TYPES,
    EVENTS,
    DispatchInput,
    EventTrigger,
    Triggers,
    explain_match,
    match_event,
    parse_on,
    payload_changed_files,
    resolve_dispatch_inputs,
)

WEBHOOKS = shared_dir() / "fixtures" / "github-webhooks"


def payloads(event: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, json.loads(path.read_text()))
        for path in sorted((WEBHOOKS / event).glob("*.json"))
    ]


def on(text: str) -> Triggers:
    """Parse a YAML ``on:`` value that must be valid."""
    triggers, problems = parse_on(yaml.safe_load(text))
    assert problems == []
    return triggers


def problems_of(text: str) -> list[tuple[tuple[Any, ...], str]]:
    return [(problem.path, problem.message) for problem in parse_on(yaml.safe_load(text))[1]]


def test_webhook_fixtures_are_present() -> None:
    for event in ("push", "pull_request", "workflow_run", "issues", "check_suite", "release"):
        assert payloads(event), f"no fixtures for {event} under {WEBHOOKS}"


# --- parsing ---------------------------------------------------------------------------------


def test_every_form_of_on() -> None:
    assert on("push").names == ("push",)
    assert on("[push, pull_request]").names == ("push", "pull_request")
    both = on("{push: null, workflow_dispatch: {}}")
    assert both.names == ("push", "workflow_dispatch")
    assert both.events["push"] == EventTrigger("push")


def test_filters_accept_a_string_or_a_list() -> None:
    push = on("push: {branches: main, tags: ['v*', '!v0*'], paths-ignore: ['docs/**']}").events[
        "push"
    ]
    assert push.branches == ("main",)
    assert push.tags == ("v*", "!v0*")
    assert push.paths_ignore == ("docs/**",)
    assert push.branches_ignore is None
    assert push.paths is None


def test_schedule_and_workflow_run() -> None:
    triggers = on(
        """
        schedule:
          - cron: '30 5 * * 1,3'
          - cron: '30 5 * * 2,4'
        workflow_run:
          workflows: [Build]
          types: [completed]
          branches: ['releases/**']
        """
    )
    assert triggers.events["schedule"].cron == ("30 5 * * 1,3", "30 5 * * 2,4")
    run = triggers.events["workflow_run"]
    assert (run.workflows, run.types, run.branches) == (
        ("Build",),
        ("completed",),
        ("releases/**",),
    )


def test_workflow_dispatch_inputs_from_the_docs() -> None:
    dispatch = on(
        """
        workflow_dispatch:
          inputs:
            logLevel:
              description: 'Log level'
              required: true
              default: 'warning'
              type: choice
              options: [info, warning, debug]
            tags:
              description: 'Test scenario tags'
              required: false
              type: boolean
            environment:
              description: 'Environment to run tests against'
              type: environment
              required: true
            plain:
        """
    ).events["workflow_dispatch"]
    assert dispatch.inputs["logLevel"] == DispatchInput(
        "logLevel", "Log level", True, "choice", "warning", ("info", "warning", "debug")
    )
    assert dispatch.inputs["tags"].type == "boolean"
    assert dispatch.inputs["environment"].required
    assert dispatch.inputs["plain"] == DispatchInput("plain")


def test_workflow_call_keeps_secrets_and_outputs_raw() -> None:
    call = on(
        """
        workflow_call:
          inputs:
            username: {description: a user, default: john-doe, required: false, type: string}
            debug: {type: boolean, default: '${{ github.event_name == ''push'' }}'}
          secrets:
            access-token: {description: token, required: false}
            other:
          outputs:
            result: {description: out, value: '${{ jobs.a.outputs.r }}'}
        """
    ).events["workflow_call"]
    assert call.inputs["username"].default == "john-doe"
    assert call.inputs["debug"].default.startswith("${{")
    assert set(call.raw["secrets"]) == {"access-token", "other"}


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("42", ("on",), "got a number"),
        ("[]", ("on",), "no events"),
        ("[push, 3]", ("on", 1), "must be strings"),
        ("[push, push]", ("on", 1), "listed twice"),
        ("pull-request", ("on",), "did you mean 'pull_request'"),
        ("{bogus_event: null}", ("on", "bogus_event"), "unknown event 'bogus_event'"),
        ("{push: [main]}", ("on", "push"), "must be empty (null) or a map"),
        ("{push: {types: [opened]}}", ("on", "push", "types"), "unknown key 'types' for push"),
        (
            "{create: {branches: [main]}}",
            ("on", "create", "branches"),
            "unknown key 'branches' for create",
        ),
        ("{pull_request: {tags: [v1]}}", ("on", "pull_request", "tags"), "unknown key 'tags'"),
        ("{push: {branches: 3}}", ("on", "push", "branches"), "string or a list of strings"),
        ("{push: {branches: [main, '']}}", ("on", "push", "branches", 1), "non-empty strings"),
        (
            "{push: {branches: [a], branches-ignore: [b]}}",
            ("on", "push", "branches-ignore"),
            "both branches and branches-ignore",
        ),
        (
            "{push: {tags: [a], tags-ignore: [b]}}",
            ("on", "push", "tags-ignore"),
            "both tags and tags-ignore",
        ),
        (
            "{pull_request: {paths: [a], paths-ignore: [b]}}",
            ("on", "pull_request", "paths-ignore"),
            "both paths and paths-ignore",
        ),
        ("{push: {branches: ['release/[0-9']}}", ("on", "push", "branches", 0), "unclosed ["),
        ("{push: {paths: '?x'}}", ("on", "push", "paths"), "no character before it"),
        (
            "{pull_request: {types: [opened, merged]}}",
            ("on", "pull_request", "types", 1),
            "unknown activity type 'merged' for pull_request",
        ),
        (
            "{issues: {types: pinned_x}}",
            ("on", "issues", "types"),
            "unknown activity type 'pinned_x'",
        ),
        ("{release: {types: [published, shipped]}}", ("on", "release", "types", 1), "'shipped'"),
        ("{schedule: {cron: '* * * * *'}}", ("on", "schedule"), "must be a list"),
        ("{schedule: [{cron: '* * *'}]}", ("on", "schedule", 0, "cron"), "3 fields"),
        ("{schedule: [{cron: '0 0 * * 7'}]}", ("on", "schedule", 0, "cron"), "day-of-week"),
        ("{schedule: [{crontab: '* * * * *'}]}", ("on", "schedule", 0), "cron key"),
        (
            "{schedule: [{cron: '* * * * *', tz: UTC}]}",
            ("on", "schedule", 0, "tz"),
            "unknown key 'tz'",
        ),
        (
            "{workflow_call: {inputs: {x: {type: list}}}}",
            ("on", "workflow_call", "inputs", "x", "type"),
            "unknown input type 'list'",
        ),
        (
            "{workflow_dispatch: {inputs: {x: {type: choice}}}}",
            ("on", "workflow_dispatch", "inputs", "x"),
            "needs a non-empty options list",
        ),
        (
            "{workflow_dispatch: {inputs: {x: {type: choice, options: [a, b], default: c}}}}",
            ("on", "workflow_dispatch", "inputs", "x", "default"),
            "not among the options: a, b",
        ),
        (
            "{workflow_dispatch: {inputs: {x: {type: boolean, default: 'yes'}}}}",
            ("on", "workflow_dispatch", "inputs", "x", "default"),
            "must be true or false",
        ),
        (
            "{workflow_dispatch: {inputs: {x: {type: number, default: ten}}}}",
            ("on", "workflow_dispatch", "inputs", "x", "default"),
            "must be a number",
        ),
        (
            "{workflow_dispatch: {inputs: {x: {required: 'yes'}}}}",
            ("on", "workflow_dispatch", "inputs", "x", "required"),
            "true or false",
        ),
        (
            "{workflow_dispatch: {inputs: {x: {kind: string}}}}",
            ("on", "workflow_dispatch", "inputs", "x", "kind"),
            "unknown key 'kind'",
        ),
        (
            "{workflow_dispatch: {inputs: {1x: {}}}}",
            ("on", "workflow_dispatch", "inputs", "1x"),
            "must start with a letter",
        ),
        (
            "{workflow_call: {inputs: {x: {description: d}}}}",
            ("on", "workflow_call", "inputs", "x"),
            "needs a type",
        ),
        (
            "{workflow_call: {inputs: {x: {type: choice, options: [a]}}}}",
            ("on", "workflow_call", "inputs", "x", "options"),
            "unknown key 'options'",
        ),
        (
            "{workflow_call: {outputs: {o: {description: d}}}}",
            ("on", "workflow_call", "outputs", "o"),
            "needs a value",
        ),
        (
            "{workflow_call: {secrets: {s: {needed: true}}}}",
            ("on", "workflow_call", "secrets", "s", "needed"),
            "unknown key 'needed'",
        ),
    ],
)
def test_problems_name_the_path_and_what_was_expected(
    text: str, path: tuple[Any, ...], fragment: str
) -> None:
    found = problems_of(text)
    assert any(where == path and fragment in message for where, message in found), found


def test_every_documented_event_is_known() -> None:
    documented = {
        "branch_protection_rule", "check_run", "check_suite", "create", "delete", "deployment",
        "deployment_status", "discussion", "discussion_comment", "fork", "gollum", "image_version",
        "issue_comment", "issues", "label", "merge_group", "milestone", "page_build", "project",
        "project_card", "project_column", "public", "pull_request", "pull_request_review",
        "pull_request_review_comment", "pull_request_target", "push", "registry_package", "release",
        "repository_dispatch", "schedule", "status", "watch", "workflow_call", "workflow_dispatch",
        "workflow_run",
    }  # fmt: skip
    assert documented <= set(EVENTS)
    triggers, problems = parse_on(sorted(documented))
    assert problems == []
    assert set(triggers.names) == documented


def test_default_types() -> None:
    assert DEFAULT_TYPES["pull_request"] == ("opened", "synchronize", "reopened")
    assert DEFAULT_TYPES["pull_request_target"] == ("opened", "synchronize", "reopened")
    assert ACTIVITY_TYPES["check_suite"] == ("completed",)


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(EVENTS), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(_PLAIN)
def test_any_plain_value_gives_triggers_and_problems(raw: Any) -> None:
    triggers, problems = parse_on(raw)
    assert isinstance(triggers, Triggers)
    assert all(problem.path[0] == "on" and problem.message for problem in problems)


# --- matching real payloads ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "payload"), payloads("pull_request"))
def test_pull_request_default_types(name: str, payload: dict[str, Any]) -> None:
    expected = payload["action"] in ("opened", "synchronize", "reopened")
    assert match_event(on("pull_request"), "pull_request", payload) is expected
    assert match_event(on("pull_request_target"), "pull_request_target", payload) is expected


@pytest.mark.parametrize(("name", "payload"), payloads("pull_request"))
def test_pull_request_listed_types_and_base_branch(name: str, payload: dict[str, Any]) -> None:
    labels = on("pull_request: {types: [labeled, unlabeled]}")
    assert match_event(labels, "pull_request", payload) is (
        payload["action"] in ("labeled", "unlabeled")
    )
    opened = payload["action"] in DEFAULT_TYPES["pull_request"]
    assert payload["pull_request"]["base"]["ref"] == "master"
    assert match_event(on("pull_request: {branches: [master]}"), "pull_request", payload) is opened
    assert (
        match_event(on("pull_request: {branches: ['refs/heads/master']}"), "pull_request", payload)
        is opened
    )
    assert not match_event(on("pull_request: {branches: ['releases/**']}"), "pull_request", payload)
    assert not match_event(on("pull_request: {branches-ignore: [master]}"), "pull_request", payload)
    assert not match_event(
        on("pull_request: {branches: ['**', '!master']}"), "pull_request", payload
    )


def test_pull_request_paths_use_the_given_diff() -> None:
    payload = payloads("pull_request")[0][1]
    triggers = on("pull_request: {paths: ['**.js']}")
    assert match_event(triggers, "pull_request", payload, changed_files=["src/app.js"])
    assert not match_event(triggers, "pull_request", payload, changed_files=["README.md"])
    assert match_event(triggers, "pull_request", payload)  # no diff known: GitHub runs


PUSHES = payloads("push")


@pytest.mark.parametrize(("name", "payload"), PUSHES)
def test_push_branch_and_tag_filters(name: str, payload: dict[str, Any]) -> None:
    ref = payload["ref"]
    is_master, is_tag = ref == "refs/heads/master", ref.startswith("refs/tags/")
    assert match_event(on("push"), "push", payload)
    assert match_event(on("push: {branches: [master]}"), "push", payload) is is_master
    assert match_event(on("push: {branches: ['refs/heads/master']}"), "push", payload) is is_master
    assert match_event(on("push: {tags: ['simple-*']}"), "push", payload) is is_tag
    assert match_event(on("push: {tags: ['refs/tags/simple-tag']}"), "push", payload) is is_tag
    assert match_event(on("push: {tags: ['v*']}"), "push", payload) is False
    # only a branch filter: tags never run; only a tag filter: branches never run
    assert match_event(on("push: {branches-ignore: [dev]}"), "push", payload) is is_master
    assert match_event(on("push: {tags-ignore: [nothing]}"), "push", payload) is is_tag
    assert match_event(on("push: {branches: [master], tags: ['**']}"), "push", payload)
    assert (
        match_event(
            on("push: {branches-ignore: [master], tags-ignore: ['simple-*']}"), "push", payload
        )
        is False
    )


def test_push_paths_from_the_payload() -> None:
    branch_pushes = [payload for _, payload in PUSHES if payload["ref"] == "refs/heads/master"]
    assert branch_pushes
    for payload in branch_pushes:
        changed = payload_changed_files(payload)
        assert changed == ["README.md"]
        assert match_event(on("push: {paths: ['**.md']}"), "push", payload, changed_files=changed)
        assert match_event(on("push: {paths: ['*']}"), "push", payload, changed_files=changed)
        assert not match_event(
            on("push: {paths: ['src/**']}"), "push", payload, changed_files=changed
        )
        assert not match_event(
            on("push: {paths: ['**', '!README.md']}"), "push", payload, changed_files=changed
        )
        assert not match_event(
            on("push: {paths-ignore: ['*.md']}"), "push", payload, changed_files=changed
        )
        assert match_event(
            on("push: {paths-ignore: ['docs/**']}"), "push", payload, changed_files=changed
        )
        assert not match_event(
            on("push: {branches: [dev], paths: ['**']}"), "push", payload, changed_files=changed
        )


def test_path_filters_are_not_evaluated_for_tag_pushes() -> None:
    tag_push = next(payload for _, payload in PUSHES if payload["ref"].startswith("refs/tags/"))
    assert match_event(on("push: {paths: ['src/**']}"), "push", tag_push, changed_files=[])


def test_path_filters_without_a_diff_and_with_an_empty_one() -> None:
    payload = {"ref": "refs/heads/main"}
    triggers = on("push: {paths: ['src/**']}")
    assert match_event(triggers, "push", payload, changed_files=None)
    assert not match_event(triggers, "push", payload, changed_files=[])
    assert not match_event(
        on("push: {paths-ignore: ['docs/**']}"), "push", payload, changed_files=[]
    )


def test_only_the_first_300_changed_files_count() -> None:
    payload = {"ref": "refs/heads/main"}
    triggers = on("push: {paths: ['src/**']}")
    files = [f"docs/{index}.md" for index in range(300)] + ["src/late.py"]
    assert not match_event(triggers, "push", payload, changed_files=files)
    assert match_event(triggers, "push", payload, changed_files=files[1:])


def test_payload_changed_files() -> None:
    assert payload_changed_files({"deleted": True, "commits": []}) == []
    assert payload_changed_files({"commits": []}) is None
    assert payload_changed_files({"commits": [{"id": "x"}]}) is None  # Actions payloads omit files
    commits = [
        {"added": ["a.py"], "modified": ["b.py"], "removed": []},
        {"added": [], "modified": ["a.py"], "removed": ["c.py"]},
    ]
    assert payload_changed_files({"commits": commits}) == ["a.py", "b.py", "c.py"]


@pytest.mark.parametrize(("name", "payload"), payloads("workflow_run"))
def test_workflow_run(name: str, payload: dict[str, Any]) -> None:
    run = payload["workflow_run"]
    is_test = payload["workflow"]["name"] == "test"
    completed = payload["action"] == "completed"
    assert match_event(
        on("workflow_run: {workflows: [test], types: [completed]}"), "workflow_run", payload
    ) is (is_test and completed)
    assert match_event(on("workflow_run: {workflows: [test]}"), "workflow_run", payload) is is_test
    manual = on("workflow_run: {workflows: ['Manually triggered workflow'], branches: [main]}")
    assert match_event(manual, "workflow_run", payload) is (
        run["name"] == "Manually triggered workflow"
    )
    assert match_event(
        on("workflow_run: {workflows: [test], branches-ignore: [master]}"), "workflow_run", payload
    ) is (is_test and run["head_branch"] != "master")
    assert not match_event(on("workflow_run"), "workflow_run", payload)


@pytest.mark.parametrize(("name", "payload"), payloads("issues"))
def test_issues_types(name: str, payload: dict[str, Any]) -> None:
    assert match_event(on("issues"), "issues", payload)
    assert match_event(on("issues: {types: [opened, labeled]}"), "issues", payload) is (
        payload["action"] in ("opened", "labeled")
    )


@pytest.mark.parametrize(("name", "payload"), payloads("check_suite"))
def test_check_suite_runs_only_for_documented_types(name: str, payload: dict[str, Any]) -> None:
    assert match_event(on("check_suite"), "check_suite", payload) is (
        payload["action"] == "completed"
    )


@pytest.mark.parametrize(("name", "payload"), payloads("release"))
def test_release_types(name: str, payload: dict[str, Any]) -> None:
    assert match_event(on("release"), "release", payload)
    assert match_event(on("release: {types: [published]}"), "release", payload) is (
        payload["action"] == "published"
    )


@pytest.mark.parametrize(("name", "payload"), payloads("repository_dispatch"))
def test_repository_dispatch_types_are_event_types(name: str, payload: dict[str, Any]) -> None:
    assert match_event(on("repository_dispatch"), "repository_dispatch", payload)
    assert match_event(
        on("repository_dispatch: {types: [on-demand-test]}"), "repository_dispatch", payload
    )
    assert not match_event(
        on("repository_dispatch: {types: [deploy]}"), "repository_dispatch", payload
    )


@pytest.mark.parametrize(("name", "payload"), payloads("merge_group"))
def test_merge_group_base_branch(name: str, payload: dict[str, Any]) -> None:
    assert match_event(on("merge_group: {branches: [main]}"), "merge_group", payload)
    assert not match_event(on("merge_group: {branches: [develop]}"), "merge_group", payload)


@pytest.mark.parametrize(
    ("name", "payload"), payloads("workflow_dispatch") + payloads("create") + payloads("status")
)
def test_events_without_filters(name: str, payload: dict[str, Any]) -> None:
    triggers = on("[workflow_dispatch, create, status]")
    for event in ("workflow_dispatch", "create", "status"):
        assert match_event(triggers, event, payload)
    assert not match_event(triggers, "push", payload)


def test_schedule_matches_its_own_crons() -> None:
    triggers = on("schedule: [{cron: '30 5 * * 1,3'}]")
    assert match_event(triggers, "schedule", {"schedule": "30 5 * * 1,3"})
    assert not match_event(triggers, "schedule", {"schedule": "0 0 * * *"})
    assert match_event(triggers, "schedule", {})


def test_explain_match_gives_reasons() -> None:
    payload = dict(payloads("pull_request")[0][1])
    payload["action"] = "closed"
    result = explain_match(on("pull_request"), "pull_request", payload)
    assert not result
    assert "'closed'" in result.reason
    assert "default types" in result.reason
    assert "does not listen to push" in explain_match(on("pull_request"), "push", payload).reason
    ignored = explain_match(
        on("push: {branches-ignore: ['release/*']}"), "push", {"ref": "refs/heads/release/1"}
    )
    assert not ignored.matched
    assert "branches-ignore" in ignored.reason


# --- dispatch inputs -------------------------------------------------------------------------

DISPATCH = on(
    """
    workflow_dispatch:
      inputs:
        logLevel: {required: true, default: warning, type: choice, options: [info, warning, debug]}
        tags: {type: boolean}
        environment: {type: environment, required: true}
        count: {type: number, default: 2}
        note: {}
    """
).events["workflow_dispatch"]


def test_dispatch_inputs_defaults_and_types() -> None:
    resolved = resolve_dispatch_inputs(DISPATCH, {"environment": "staging", "tags": "TRUE"})
    assert resolved == {
        "logLevel": "warning",
        "tags": True,
        "environment": "staging",
        "count": 2.0,
        "note": "",
    }
    resolved = resolve_dispatch_inputs(
        DISPATCH,
        {"environment": "prod", "logLevel": "debug", "tags": "false", "count": "3.5", "note": "hi"},
    )
    assert resolved == {
        "logLevel": "debug",
        "tags": False,
        "environment": "prod",
        "count": 3.5,
        "note": "hi",
    }
    assert resolve_dispatch_inputs(DISPATCH, {"environment": "x", "tags": True})["tags"] is True


@pytest.mark.parametrize(
    ("provided", "fragment"),
    [
        ({}, "input 'environment' is required"),
        ({"environment": "x", "colour": "red"}, "unknown input 'colour'"),
        ({"environment": "x", "logLevel": "trace"}, "must be one of: info, warning, debug"),
        ({"environment": "x", "tags": "yes"}, "is a boolean"),
        ({"environment": "x", "count": "many"}, "is a number"),
        ({"environment": "x", "count": "nan"}, "is a number"),
    ],
)
def test_bad_dispatch_inputs_are_config_errors(provided: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_dispatch_inputs(DISPATCH, provided)


def test_call_inputs_keep_expression_defaults_and_type_values() -> None:
    call = on(
        """
        workflow_call:
          inputs:
            debug: {type: boolean, default: '${{ github.event_name == ''push'' }}'}
            retries: {type: number}
            name: {type: string, required: true}
        """
    ).events["workflow_call"]
    resolved = resolve_dispatch_inputs(call, {"name": "x"})
    assert resolved == {"debug": "${{ github.event_name == 'push' }}", "retries": 0.0, "name": "x"}
    assert (
        resolve_dispatch_inputs(call, {"name": 7, "debug": False, "retries": 2})["retries"] == 2.0
    )
    with pytest.raises(ConfigError, match="is a number"):
        resolve_dispatch_inputs(call, {"name": "x", "retries": True})


def test_dispatch_without_inputs_rejects_any() -> None:
    bare = on("workflow_dispatch").events["workflow_dispatch"]
    assert resolve_dispatch_inputs(bare, {}) == {}
    with pytest.raises(ConfigError, match="known inputs: none"):
        resolve_dispatch_inputs(bare, {"x": "1"})


def test_fixture_dir_is_the_shared_one() -> None:
    assert isinstance(WEBHOOKS, Path)
    assert (WEBHOOKS / "README.md").is_file()
