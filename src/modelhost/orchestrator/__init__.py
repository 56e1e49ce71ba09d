"""Orchestrator: the pure planner, the device inventory and the replica backends."""
