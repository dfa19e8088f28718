"""Research-frontier methods, each a pure function a recipe switch selects (README's variants table):

- `reward_weighting`: POW3R-style weighting of reward criteria by how much they separate a group;
- `delta`: DelTA's token coefficients on token-gradient features, as the paper defines them;
- `token_credit`: the cheap DelTA proxy on token ids;
- `label_free`: the within-group rank of self-certainty (with the `majority_vote` reward);
- `distillation`: on-policy distillation's per-token reverse-KL advantages and rollout horizons (TOPD, POPD);
- `distil`: DistIL's forward cross-entropy to a feedback-conditioned teacher, with its sequence term;
- `extrapolate`: RELEX-style extrapolation of LoRA checkpoints along their rank-1 trajectory.

GDPO's advantages and the KL-Cov policy loss sit with the others of their kind in grpo/algorithm.
"""
