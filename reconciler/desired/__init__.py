"""Desired state: git source, YAML loading, schema and safety rules, operator policy,
manifests -> DesiredState."""
