"""Replica backends: where and how engine processes run (local subprocesses for now)."""
