"""Ranking policies: softmax REINFORCE with off-policy and top-K corrections, exp(r/λ) fine-tuning,
Plackett-Luce, and a LinUCB baseline."""
