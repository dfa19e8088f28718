"""Rollout: sample G completions per prompt, score their tokens under a policy, call the rewards.

- `generate(model, tokenizer, prompt_token_lists, group_size, SamplingParams(...), seeds)`: the sampler;
- `completion_logprobs` / `CompletionScorer`: log-probs of the sampled tokens (reference, old, current);
- `scoring`: the recipe's reward functions called on a batch of completions;
- `RolloutBatch`: the padded tensors and texts that flow from the sampler to the update.
"""

from grpo.rollout.batch import RolloutBatch, concat_batches, left_pad
from grpo.rollout.generation import cut_at_stop, generate
from grpo.rollout.logprobs import CompletionScorer, completion_logprobs
from grpo.rollout.sampling import SamplingParams, draw_by_inverse_cdf, next_token_stats, sample_tokens

__all__ = [
    "CompletionScorer", "RolloutBatch", "SamplingParams", "completion_logprobs", "concat_batches", "cut_at_stop",
    "draw_by_inverse_cdf", "generate", "left_pad", "next_token_stats", "sample_tokens",
]
