"""Acting: the executor's step loop (steps.py) and its handlers, container_steps.py
(over the hosts' container engines, engines.py: containers.py and images.py) and
lb_steps.py (over the load-balancer port, reconciler.lb.port)."""
