"""Declarative GitOps reconciler for Docker hosts behind HAProxy."""

__version__ = "0.1.0"
