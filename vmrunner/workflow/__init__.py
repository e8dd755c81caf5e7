"""The GitHub Actions workflow language: loading, expressions, matrices, triggers, planning.

This layer is pure: given files and an event it returns typed objects or errors with file and
line. It never starts a process and never imports ``vmrunner.machines``.
"""
