"""The load balancer: what the executor and the canary code need of it."""
