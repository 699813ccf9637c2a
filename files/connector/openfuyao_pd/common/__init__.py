"""Helpers shared by the host-side tools (no third-party dependencies)."""
