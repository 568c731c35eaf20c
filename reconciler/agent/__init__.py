"""Agents of etcd mode: processes on the hosts that apply what the leader publishes."""
