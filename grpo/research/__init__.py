"""Research-frontier methods, each a pure function a recipe switch selects (README's variants table):

- `reward_weighting`: POW3R-style weighting of reward criteria by how much they separate a group;
- `delta`: DelTA's token coefficients on token-gradient features, as the paper defines them;
- `token_credit`: the cheap DelTA proxy on token ids (grpo/objectives/token_credit.py applies both forms);
- `label_free`: the within-group rank of self-certainty (with the `majority_vote` reward);
- `on_policy_distillation`: OPD's per-token reverse-KL advantages and rollout horizons (TOPD, POPD);
- `distil_rich_feedback`: DistIL's forward cross-entropy to a feedback-conditioned teacher, with its
  sequence term as per-token advantages;
- `extrapolate`: RELEX-style extrapolation of LoRA checkpoints along their rank-1 trajectory.

GDPO's advantages and the KL-Cov policy loss sit with the others of their kind in grpo/algorithm;
the objectives that use the distillation methods are in grpo/objectives.
"""
