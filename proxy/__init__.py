"""registry-proxy: a resilience sidecar for the agent registry on PostgreSQL."""

__version__ = "0.1.0"
