"""Rollout: sample G completions per prompt, their log-probs under a policy, and their rewards.

- `generate(model, tokenizer, prompt_token_lists, group_size, SamplingParams(...), seeds)`: the sampler;
  `generate_turn(..., context=)` samples on a carried `ContextCache` (an agent's later turns);
- `completion_logprobs` / `LogProbPass` / `frozen_logprobs`: log-prob passes over the sampled tokens
  (reference, old and current policies, teachers);
- `rewarding`: the recipe's reward functions called on a batch of completions;
- `RolloutBatch`: the padded tensors and texts that flow from the sampler to the update.
"""

from grpo.rollout.batch import RolloutBatch, concat_batches, left_pad
from grpo.rollout.generation import ContextCache, cut_at_stop, generate, generate_turn
from grpo.rollout.logprobs import LogProbPass, LogProbPlan, TokenLogProbs, completion_logprobs, frozen_logprobs
from grpo.rollout.sampling import SamplingParams, draw_by_inverse_cdf, next_token_stats, sample_tokens

__all__ = [
    "ContextCache", "LogProbPass", "LogProbPlan", "RolloutBatch", "SamplingParams", "TokenLogProbs", "completion_logprobs",
    "concat_batches", "cut_at_stop", "draw_by_inverse_cdf", "frozen_logprobs", "generate", "generate_turn", "left_pad",
    "next_token_stats", "sample_tokens",
]
