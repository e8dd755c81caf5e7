"""Machines: the providers that start and stop them, the warm pool, and the guest agent.

This is the only layer that starts processes or VMs. It never imports ``vmrunner.workflow``.
"""
