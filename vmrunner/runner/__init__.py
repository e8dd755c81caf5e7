"""Orchestration of workflow runs: jobs as a DAG, one session per job, steps and results."""
