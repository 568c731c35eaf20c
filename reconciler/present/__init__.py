"""Presentation: plan/apply output, status, metrics."""
