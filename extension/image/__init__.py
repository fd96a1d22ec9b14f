"""Image training: memory levers (frozen-weight storage, lazy checkpoint loading, encoder release)."""
