"""Observers: read-only views of live state, with pure parsers kept apart from I/O."""
