"""``python -m bench learning``: what learning from runs costs a step, and computing insights.

``LearningSink.emit`` runs inline on the event loop: each finished command is one SQLite
transaction (the command row, its pattern, its graph edge, and for a failure the lesson
check). Figures, against a fresh store that fills up as the bench goes:
- per ``StepFinished`` latency (p50/p99) with ``--failure-rate`` of the commands failing;
- the ``RunFinished`` cost (the run's insights), for a history of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.sandbox import percentiles
from vmrunner.learning.history import Learning, LearningSink
from vmrunner.reports import events as ev


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench learning", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)
    pick = random.Random(7)
    step_seconds: list[float] = []
    finish_seconds: list[float] = []
    with (
        tempfile.TemporaryDirectory() as folder,
        Learning.open(Path(folder) / "state.db") as learning,
    ):
        sink = LearningSink(learning, repository="bench/repo")
        for run in range(args.runs):
            run_id = f"run-{run}"
            sink.emit(
                ev.RunStarted(
                    run_id, "bench", "bench.yml", "push", time.time(), sha=f"{run // 5:040x}"
                )
            )
            sink.emit(ev.JobQueued(run_id, "job", "job", "job", time.time()))
            for index in range(args.steps):
                outcome: ev.Result = "failure" if pick.random() < args.failure_rate else "success"
                sink.emit(
                    ev.StepStarted(
                        run_id,
                        "job",
                        index,
                        "step",
                        f"step {index}",
                        time.time(),
                        command=f"make target-{index}",
                    )
                )
                sink.emit(
                    ev.LogLine(
                        run_id,
                        "job",
                        index,
                        "stderr",
                        f"error {pick.randrange(1000)} in target-{index}",
                        time.time(),
                    )
                )
                began = time.perf_counter()
                sink.emit(
                    ev.StepFinished(
                        run_id,
                        "job",
                        index,
                        outcome,
                        outcome,
                        time.time(),
                        pick.uniform(1, 30),
                        exit_code=int(outcome == "failure"),
                    )
                )
                step_seconds.append(time.perf_counter() - began)
            began = time.perf_counter()
            sink.emit(ev.RunFinished(run_id, "success", time.time(), 1.0))
            finish_seconds.append(time.perf_counter() - began)
        lessons = len(learning.lessons())
    figures = {
        "steps_recorded": len(step_seconds),
        "step": percentiles(step_seconds),
        "run_finished": percentiles(finish_seconds),
        "lessons": lessons,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{len(step_seconds)} commands over {args.runs} runs, {lessons} lessons")
        print(f"per StepFinished: {figures['step']}")
        print(f"per RunFinished (insights): {figures['run_finished']}")
    return 0
