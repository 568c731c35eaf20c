"""Canary analysis: measurements per revision and the decision to advance or abort."""
