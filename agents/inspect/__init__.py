"""Inspection: named health checks over the running processes and the broker, with thresholds in configuration."""
