"""Research-frontier methods, each a pure function a recipe switch selects (README's variants table):

- `reward_weighting`: POW3R-style weighting of reward criteria by how much they separate a group;
- `token_credit`: DelTA-style per-token credit (the token-id frequency proxy);
- `label_free`: the within-group rank of self-certainty (with the `majority_vote` reward);
- `extrapolate`: RELEX-style extrapolation of LoRA checkpoints along their rank-1 trajectory.
"""
