"""Credit assignment: the gated-attention model (torch) and its baselines."""
