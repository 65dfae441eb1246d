"""Tests of the bundled Toxiproxy-compatible server in ``chaos/toxiproxy``."""
