"""The `modelhost` command line (Typer + Rich), modelled on DeepInfra's deepctl."""
