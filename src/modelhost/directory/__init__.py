"""The in-memory directory the request path reads: tokens, users, deployments and adapters,
kept current from the database by each server process (see `live.py`)."""
