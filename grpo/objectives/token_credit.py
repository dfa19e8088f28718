"""Token credit: each token's advantage times a coefficient, A_t = w_t A (tokens.credit). Both DelTA
forms live here, behind one interface; their math is in grpo/research (delta.py: the paper's
coefficients on token-gradient features; token_credit.py: the token-id frequency proxy).

- none: every token of a completion carries its completion's advantage;
- paper: coefficients from the trainer pass's final hidden states and log-probs (it asks the pass
  for them: `needs_hidden`);
- proxy: coefficients from the sampled token ids and the rewards of each group.
Both are computed per micro-batch (whole groups), detached, and scale the advantage only (not the
KL term).
"""

from __future__ import annotations

import torch

from grpo.research.delta import delta_token_weights, gradient_features
from grpo.research.token_credit import discriminative_token_weights


def _paper(advantages, mask, completion_ids, rewards, group_size, hidden, logp, s) -> torch.Tensor:
    return delta_token_weights(gradient_features(hidden, logp.detach()), mask, advantages, group_size,
                               s.delta_lam_min, s.delta_lam_max, s.delta_refine_steps)


def _proxy(advantages, mask, completion_ids, rewards, group_size, hidden, logp, s) -> torch.Tensor:
    return discriminative_token_weights(completion_ids.to(mask.device), mask, rewards.to(mask.device), group_size,
                                        s.credit_min, s.credit_max)


# tokens.credit -> the (b, T) coefficients; "none" has none
CREDIT_WEIGHTS = {"none": None, "paper": _paper, "proxy": _proxy}


class TokenCredit:
    """The recipe's `tokens` section's credit: `scale(advantages, ...)` -> per-token advantages."""

    def __init__(self, tokens):
        if tokens.credit not in CREDIT_WEIGHTS:
            raise ValueError(f"tokens.credit={tokens.credit!r}: use {', '.join(CREDIT_WEIGHTS)}")
        self.weights, self.settings = CREDIT_WEIGHTS[tokens.credit], tokens
        self.needs_hidden = tokens.credit == "paper"

    def scale(self, advantages: torch.Tensor, mask: torch.Tensor, completion_ids: torch.Tensor,
              rewards: torch.Tensor, group_size: int, hidden: torch.Tensor | None,
              logp: torch.Tensor) -> torch.Tensor:
        """advantages (b,) -> (b,) unchanged (none) or (b, T) = w_t * A (paper, proxy).

        mask (b, T): the tokens that train; completion_ids (b, T); rewards (b,) the weighted totals;
        hidden (b, T, H) (paper only); logp (b, T) the pass's log-probs (paper only).
        """
        if self.weights is None:
            return advantages
        weights = self.weights(advantages, mask, completion_ids, rewards, group_size, hidden, logp, self.settings)
        return weights * advantages.unsqueeze(1)  # (b, T)
