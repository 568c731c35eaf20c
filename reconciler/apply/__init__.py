"""Acting: the executor's step loop, containers and images on a host."""
