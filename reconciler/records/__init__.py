"""Request records: every request HAProxy answers, named by action, counted and timed."""
