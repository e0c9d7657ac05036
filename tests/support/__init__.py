"""Helpers shared by tests (fixtures, fake servers)."""
