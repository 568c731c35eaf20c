"""etcd mode: the cluster client (``etcd``), the key layout (``keys``) and the leader
election with its fence (``leader``). Like ``transport``, it knows where things are,
not what to do: no planner, no executor."""
