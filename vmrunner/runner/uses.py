"""Steps that ``uses`` an action: native checkout, composite actions, node actions and their
post steps. Where actions come from and what their metadata says is
``vmrunner/actions/``; ``actions/checkout`` is ``vmrunner/actions/checkout.py``.

Composite actions run their steps in a scope of their own (``steps`` and ``inputs`` contexts,
the ``uses`` step's env, which does not leak back); what they write to ``GITHUB_ENV`` and
``GITHUB_PATH`` is the job's. Node actions get their inputs as ``INPUT_*`` and their saved
state as ``STATE_*``. ``pre`` scripts of remote actions run at the start of the job (when the
actions are fetched, as GitHub does); a local action is only there once a step put it in the
workspace, so its ``pre`` runs right before its ``main``. ``post`` scripts run after all steps
of the job, in reverse order.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vmrunner.actions.checkout import CheckoutSettings, checkout
from vmrunner.actions.origin import Origin
from vmrunner.actions.sources import (
    Action,
    ActionError,
    Sources,
    is_checkout,
    is_docker_reference,
    load_local_action,
    load_remote_action,
    load_self_action,
)
from vmrunner.errors import ExpressionError, VmrunnerError
from vmrunner.machines.base import ImageRun
from vmrunner.reports.events import Result, StepFinished, StepStarted
from vmrunner.runner.context import JobHandle
from vmrunner.runner.options import action_sources
from vmrunner.runner.steps import FILE_COMMANDS_DIR, IMAGE_FILE_COMMANDS, Scope, StepOutcome
from vmrunner.workflow.calls import SELF
from vmrunner.workflow.evaluation import as_text, render, render_env, render_text
from vmrunner.workflow.expressions import EvaluationHooks, evaluate_if
from vmrunner.workflow.models import Step

#: Where a Docker action's container sees the workspace (as on GitHub).
DOCKER_WORKSPACE = "/github/workspace"


def _empty_tar() -> bytes:
    buffer = io.BytesIO()
    tarfile.open(fileobj=buffer, mode="w").close()
    return buffer.getvalue()


EMPTY_TAR = _empty_tar()


@dataclass(slots=True)
class _Post:
    action: Action
    scope: Scope
    step: Step
    step_env: dict[str, str]
    inputs: dict[str, str]
    state: dict[str, str]


class ActionSteps:
    """Runs the ``uses`` steps of one job; keeps its post steps and the actions copied in."""

    def __init__(self, job: JobHandle) -> None:
        self.job = job
        self.posts: list[_Post] = []
        #: Action folders already copied into the job's machine.
        self.uploaded: set[str] = set()
        #: Remote actions fetched at set-up, and the state their ``pre`` saved, by step.
        self.fetched: dict[int, Action] = {}
        self.pre_state: dict[int, dict[str, str]] = {}

    async def run_pres(self, steps: tuple[Step, ...], scope: Scope) -> None:
        """At set-up: fetch the job's remote actions and run their ``pre`` scripts, in order.

        An action that cannot be fetched is left for its step to report.
        """
        runtime = self.job.live_runtime
        for step in steps:
            uses = (step.uses or "").strip()
            if (
                not uses or uses.startswith((".", SELF)) or is_checkout(uses)
                or is_docker_reference(uses)
            ):
                continue
            try:
                action = await self.remote_action(uses, -1)
            except ActionError:
                continue
            self.fetched[id(step)] = action
            if action.is_node and action.pre and runtime.has_node:
                await self.run_pre(action, step, scope)

    async def run_pre(self, action: Action, step: Step, scope: Scope) -> None:
        job, run = self.job, self.job.run
        runtime = job.live_runtime
        contexts = job.contexts(scope, job.env_context(scope), github=job.step_github(step, scope))
        hooks = job.hooks(scope)
        try:
            if not evaluate_if(action.pre_if or "always()", contexts, hooks):
                return
            step_env = render_env(step.env, contexts, hooks)
            with_ = render(step.with_, {**contexts, "env": {**contexts["env"], **step_env}}, hooks)
        except VmrunnerError as exc:
            runtime.annotate(-1, "error", f"pre of {action.reference}: {exc}")
            scope.failed = True
            return
        given = {str(k): as_text(v) for k, v in with_.items()} if isinstance(with_, Mapping) else {}
        inputs = self.action_inputs(action, given, contexts, hooks)
        index = job.next_index()
        run.emit(
            StepStarted(
                run.run_id, job.job_key, index, "step", run.masker.mask(f"Pre {step.display_name}"),
                time.time(), step_id=step.id or "", machine_id=runtime.machine.id,
            )
        )
        began = time.monotonic()
        env = self.node_env(action, step, scope, inputs, step_env, {})
        cwd = str(job.github.get("workspace") or "/")
        result = await runtime.run_script(
            index, self.node_argv(action, action.pre), "", "", env=env, cwd=cwd, timeout=None
        )
        self.pre_state[id(step)] = dict(result.state)
        outcome = job.script_outcome(index, result)
        if outcome.outcome == "failure":
            scope.failed = True
        runtime.end_groups(index)
        run.emit(
            StepFinished(
                run.run_id, job.job_key, index, outcome.outcome, outcome.conclusion, time.time(),
                time.monotonic() - began, exit_code=result.exit_code, machine_id=runtime.machine.id,
            )
        )

    async def run_posts(self, scope: Scope) -> None:
        for post in reversed(self.posts):
            await self.run_post(post, scope)

    async def run_uses(
        self, step: Step, scope: Scope, index: int, contexts: dict[str, Any],
        hooks: EvaluationHooks, step_env: dict[str, str], minutes: float | None,
    ) -> StepOutcome:
        runtime = self.job.live_runtime
        if step.uses is None:
            raise ActionError("the step has neither run nor uses")
        uses = step.uses.strip()
        with_ = render(step.with_, contexts, hooks)
        inputs = (
            {str(k): as_text(v) for k, v in (with_ or {}).items()}
            if isinstance(with_, Mapping)
            else {}
        )
        if is_docker_reference(uses):
            action = Action(uses, "", "docker", image=uses)
            return await self.run_docker(action, step, scope, index, inputs, step_env, minutes)
        if is_checkout(uses):
            await self.checkout(inputs, index)
            return StepOutcome("success", "success")
        if uses.startswith("./") or uses == ".":
            action = await load_local_action(
                runtime.machine, uses, str(self.job.github["workspace"])
            )
        elif uses.startswith(SELF):  # the repository of the file naming it: a composite's own
            inner = scope.action
            origin = self.job.run.origin
            if inner is not None and inner.repository:
                origin = Origin("", repository=inner.repository, ref=inner.ref)
            notes: list[str] = []
            action = await load_self_action(
                runtime.machine, uses, origin, self.sources(), self.uploaded, notes
            )
            for note in notes:
                runtime.annotate(index, "warning", note)
        else:
            action = self.fetched.get(id(step)) or await self.remote_action(uses, index)
        resolved = self.action_inputs(action, inputs, contexts, hooks)
        if action.is_docker:
            return await self.run_docker(action, step, scope, index, resolved, step_env, minutes)
        if action.is_composite:
            return await self.run_composite(action, step, scope, index, resolved, step_env)
        return await self.run_node(action, step, scope, index, resolved, step_env, minutes)

    def action_inputs(
        self, action: Action, given: Mapping[str, str], contexts: Mapping[str, Any],
        hooks: EvaluationHooks,
    ) -> dict[str, str]:
        resolved: dict[str, str] = {}
        known = {spec.name.lower() for spec in action.inputs}
        for spec in action.inputs:
            match = next((v for k, v in given.items() if k.lower() == spec.name.lower()), None)
            if match is not None:
                resolved[spec.name] = match
            elif spec.default is not None:
                resolved[spec.name] = render_text(spec.default, contexts, hooks)
            else:
                resolved[spec.name] = ""
        for name, value in given.items():
            if name.lower() not in known:
                resolved[name] = value
        return resolved

    async def run_composite(
        self, action: Action, step: Step, scope: Scope, index: int, inputs: dict[str, str],
        step_env: dict[str, str],
    ) -> StepOutcome:
        inner = Scope(inputs=inputs, env=step_env, action=action, parent=scope)
        await self.job.run_steps(action.steps, inner, index)
        inner_contexts = self.job.contexts(inner, self.job.env_context(inner))
        outputs: dict[str, str] = {}
        for name, spec in action.outputs.items():
            value = spec.get("value") if isinstance(spec, Mapping) else None
            if value is None:
                continue
            try:
                outputs[str(name)] = render_text(value, inner_contexts, self.job.hooks(inner))
            except VmrunnerError as exc:
                self.job.live_runtime.annotate(
                    index, "warning", f"output '{name}' of {action.reference}: {exc}"
                )
        outcome: Result = "failure" if inner.failed else "success"
        return StepOutcome(outcome, outcome, None, False, outputs)

    def node_env(
        self, action: Action, step: Step, scope: Scope, inputs: Mapping[str, str],
        step_env: Mapping[str, str], state: Mapping[str, str],
    ) -> dict[str, str]:
        runtime = self.job.live_runtime
        env = {**self.job.env_context(scope), **step_env}
        for name, value in inputs.items():
            env[f"INPUT_{name.replace(' ', '_').upper()}"] = value
        for name, value in state.items():
            env[f"STATE_{name}"] = value
        github = self.job.step_github(step, Scope(action=action))
        process_env = runtime.process_env(self.job.default_env(github), env)
        process_env["GITHUB_ACTION_PATH"] = action.path
        process_env.update(self.job.action_env)
        return process_env

    async def run_node(
        self, action: Action, step: Step, scope: Scope, index: int, inputs: dict[str, str],
        step_env: dict[str, str], minutes: float | None,
    ) -> StepOutcome:
        runtime = self.job.live_runtime
        if not runtime.has_node:
            raise ActionError(
                f"action {action.reference} needs node ({action.using}), which the machine does "
                f"not have"
            )
        timeout = minutes * 60 if minutes else None
        state: dict[str, str] = dict(self.pre_state.get(id(step), {}))
        cwd = str(self.job.github.get("workspace") or "/")
        if action.pre and id(step) not in self.pre_state:  # a local action: its pre runs now
            contexts = self.job.contexts(scope, self.job.env_context(scope))
            if evaluate_if(action.pre_if or "always()", contexts, self.job.hooks(scope)):
                env = self.node_env(action, step, scope, inputs, step_env, state)
                pre = await runtime.run_script(
                    index, self.node_argv(action, action.pre), "", "", env=env, cwd=cwd,
                    timeout=timeout,
                )
                state.update(pre.state)
                if not pre.ok:
                    return self.job.script_outcome(index, pre)
        env = self.node_env(action, step, scope, inputs, step_env, state)
        result = await runtime.run_script(
            index, self.node_argv(action, action.main), "", "", env=env, cwd=cwd, timeout=timeout
        )
        state.update(result.state)
        if action.post:
            self.posts.append(_Post(action, scope, step, dict(step_env), dict(inputs), state))
        return self.job.script_outcome(index, result)

    async def run_docker(
        self, action: Action, step: Step, scope: Scope, index: int, inputs: dict[str, str],
        step_env: dict[str, str], minutes: float | None,
    ) -> StepOutcome:
        """A Docker action (or a ``docker://`` step): a one-shot container of its image in the
        job's machine, with the workspace and file commands where GitHub mounts them."""
        job, runtime = self.job, self.job.live_runtime
        dockerfile = "" if action.image.startswith("docker://") else action.image or "Dockerfile"
        contexts = {**job.contexts(scope, job.env_context(scope)), "inputs": inputs}
        hooks = job.hooks(scope)
        if "args" in inputs:
            args = shlex.split(inputs["args"])
        else:
            args = [render_text(arg, contexts, hooks) for arg in action.args]
        env = self.node_env(action, step, scope, inputs, step_env, {})
        env.update({k: render_text(v, contexts, hooks) for k, v in action.env.items()})
        env.update(GITHUB_WORKSPACE=DOCKER_WORKSPACE, HOME="/github/home")
        if "PATH" not in {**job.env_context(scope), **step_env, **action.env}:
            del env["PATH"]  # the image's own (its ENV PATH), as GitHub passes no PATH
        workspace, temp = str(job.github.get("workspace")), runtime.paths.temp
        binds = ((workspace, DOCKER_WORKSPACE), (f"{temp}/_github_home", "/github/home"),
                 (f"{temp}/{FILE_COMMANDS_DIR}", IMAGE_FILE_COMMANDS))  # fmt: skip
        for folder, _ in binds:  # made before they are shown in the container
            await runtime.machine.put(folder, EMPTY_TAR)
        image = ImageRun(
            dockerfile or action.image.removeprefix("docker://"),
            entrypoint=inputs.get("entrypoint") or action.entrypoint, workdir=DOCKER_WORKSPACE,
            binds=binds, context=action.path if dockerfile else "",
        )  # fmt: skip
        result = await runtime.run_script(
            index, lambda _script: args, "", "", env=env, cwd=DOCKER_WORKSPACE,
            timeout=minutes * 60 if minutes else None, image=image,
        )  # fmt: skip
        return job.script_outcome(index, result)

    @staticmethod
    def node_argv(action: Action, entry: str) -> Callable[[str], list[str]]:
        target = entry if entry.startswith("/") else f"{action.path}/{entry}"
        return lambda _script: ["node", target]

    async def run_post(self, post: _Post, scope: Scope) -> None:
        runtime = self.job.live_runtime
        run = self.job.run
        contexts = self.job.contexts(scope, self.job.env_context(scope))
        try:
            wanted = evaluate_if(post.action.post_if or "always()", contexts, self.job.hooks(scope))
        except ExpressionError as exc:
            runtime.annotate(-1, "error", f"post-if of {post.action.reference}: {exc}")
            wanted = False
        if not wanted:
            return
        index = self.job.next_index()
        run.emit(
            StepStarted(
                run.run_id, self.job.job_key, index, "post",
                run.masker.mask(f"Post {post.step.display_name}"), time.time(),
                step_id=post.step.id or "", machine_id=runtime.machine.id,
            )
        )
        began = time.monotonic()
        env = self.node_env(post.action, post.step, scope, post.inputs, post.step_env, post.state)
        result = await runtime.run_script(
            index, self.node_argv(post.action, post.action.post), "", "", env=env,
            cwd=str(self.job.github.get("workspace") or "/"), timeout=None,
        )
        step = self.job.script_outcome(index, result)
        if step.outcome == "failure":
            scope.failed = True
        runtime.end_groups(index)
        run.emit(
            StepFinished(
                run.run_id, self.job.job_key, index, step.outcome, step.conclusion, time.time(),
                time.monotonic() - began, exit_code=result.exit_code, machine_id=runtime.machine.id,
            )
        )

    async def checkout(self, inputs: Mapping[str, str], index: int) -> None:
        """``actions/checkout``, natively (``vmrunner/actions/checkout.py``)."""
        runtime, run = self.job.live_runtime, self.job.run
        options, github = run.options, self.job.github
        settings = CheckoutSettings(
            repo_root=options.repo_root, repository=str(github.get("repository") or ""),
            server_url=options.server_url, event_ref=str(github.get("ref") or ""),
            commit=options.commit, mirrors=options.repository_mirrors, offline=options.offline,
            token=str(github.get("token") or ""),
        )
        done = await checkout(runtime.machine, inputs, settings, str(github["workspace"]))
        for secret in done.secrets:
            run.masker.add(secret)
        for warning in done.warnings:
            runtime.annotate(index, "warning", warning)
        for line in done.description.splitlines():
            runtime.log(index, line)

    def sources(self) -> Sources:
        return action_sources(self.job.run.options)

    async def remote_action(self, uses: str, index: int) -> Action:
        notes: list[str] = []
        with self.job.run.progress(self.job.job_key, f"fetching {uses}") as progress:
            action = await load_remote_action(
                self.job.live_runtime.machine, uses, self.sources(), self.uploaded, notes,
                progress,
            )
        for note in notes:
            self.job.live_runtime.annotate(index, "warning", note)
        return action
