"""Transports hide where a host is: this machine (local) or another one over SSH."""
