"""Planning: the pure planner, its actions, and the outcome check (verify)."""
