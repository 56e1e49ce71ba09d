"""LoRA adapters as control-plane objects: their files, and whether they fit their base."""
