"""Packaging and deployment checks: Dockerfile, Helm chart, config files."""
