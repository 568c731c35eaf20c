"""HAProxy, the one load balancer implementation: render, control, runtime, and
the request-log format."""
