"""The stages of one training step and what they run on, in loop order:

- `setup`: a run's parts built once (`build_run`): policy, backend, objective, rewards, prompts;
- `step`: one step (`train_step`), the function train.py and bench/ours.py call, and its log record;
- `prompts`: the rows, their tokens, and which prompts each step and rank samples (stateless);
- `policy`: seeding, the model with its adapter, the optimizer and schedule;
- `rollouts`: stages 1-2, sampling (or an agent's episodes) and rewards (with DAPO's dynamic sampling);
- `agents`: a multi-turn recipe's environments, the environment's reward, RLVE's curriculum;
- `reward_shaping`: stage 3, the recipe's reward shaping, its advantage estimator, which tokens train;
- `update`: stage 5, the objective's loss over micro-batches and the optimizer step;
- `metrics`, `evaluation`: what is logged, and the held-out evaluation.
"""
