"""HAProxy: runtime API client and parsers of its raw outputs."""
