"""Learning from past runs: every command kept with its outcome, turned into lessons and
suggestions (``vmrunner.reports.insights``). Nothing here imports the engine (``vmrunner.runner``).
"""
