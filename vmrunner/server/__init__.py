"""The webhook server, REST API and dashboard."""
