"""The stages of one training step, as train.py calls them, in loop order:

- `prompts`: the rows, their tokens, and which prompts each step and rank samples (stateless);
- `policy`: seeding, the model with its adapter, the optimizer and schedule;
- `rollouts`: stages 1-2, sampling and rewards (with DAPO's dynamic sampling);
- `shaping`: the recipe's reward shaping and which tokens train;
- `update`: stages 4-5, frozen log-probs and the policy update over micro-batches;
- `teacher`: the teachers of train.objective=opd (a frozen model) and distil (the policy shown feedback);
- `metrics`, `evaluation`: what is logged, and the held-out evaluation.
"""
