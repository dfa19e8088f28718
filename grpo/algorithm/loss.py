"""The GRPO loss: policy losses (a registry), the KL to the reference, aggregation, token log-probs.

Pure functions on tensors, no config objects, no I/O. Shapes: B = prompts x group size,
T = completion tokens (right-padded), V = vocabulary size; `mask` is (B, T), 1 where a token
counts.

Which policy loss runs is a name looked up in `POLICY_LOSSES` (as verl's `core_algos.py`):
each entry is a pure function with one signature that returns the per-token loss and the
per-token indicators of its own clipping, and says which aggregations it is valid with.
`with_kl` is the one place the KL term is added (`policy_loss_with_kl` calls it). Then
`aggregate_loss` reduces.

Choices the reference implementations disagree on, pinned here:
- KL to the reference uses the k3 estimator exp(r) - r - 1 with r = ref - logp
  (Schulman, "Approximating KL divergence"; DeepSeekMath eq. 4): unbiased, always >= 0.
- Aggregation modes follow verl's names: "seq-mean-token-mean" (GRPO paper, TRL's
  "grpo"), "token-mean" (DAPO, TRL's "dapo"), "seq-mean-token-sum-norm" (Dr. GRPO); each divides by
  the optimizer step's totals (tokens, sequences, rows), counted over all micro-batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClipRange:
    """How far a policy loss lets the new policy move from the old one.

    low, high: the trust region of the importance ratio, [1 - low, 1 + high]; high > low is
    DAPO's clip-higher. dual_clip_c: dual-clip's cap on the loss of negative-advantage tokens (> 1).
    kl_cov_ratio, kl_cov_coef: KL-Cov's share of tokens penalized and the penalty's weight (it
    replaces the clip).
    """

    low: float = 0.2
    high: float = 0.2
    dual_clip_c: float = 3.0
    kl_cov_ratio: float = 0.002
    kl_cov_coef: float = 1.0


@dataclass
class PolicyLoss:
    """A policy loss's per-token value (B, T) and its indicators (B, T) bool, e.g. "clip_frac":
    the tokens whose gradient its clipping removed. The trainer logs each indicator's share of
    the unmasked tokens."""

    per_token: torch.Tensor
    indicators: dict[str, torch.Tensor]


PolicyLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ClipRange], PolicyLoss]


@dataclass(frozen=True)
class PolicyLossSpec:
    fn: PolicyLossFn
    aggregations: tuple[str, ...] | None  # the aggregations it is valid with; None = any
    why: str = ""  # why the aggregation is restricted (quoted in the config error)
    default_clip: tuple[float, float] = (0.2, 0.2)  # (low, high) when the recipe leaves loss.eps_low/high unset
    max_eps: float | None = None  # a clip range above this cannot act as the loss intends (quoted with `why_eps`)
    why_eps: str = ""
    # tokens the loss treats apart, chosen over the whole optimizer step before it (KL-Cov's): (old_logp,
    # advantages, mask, clip) of the step's rows -> (B, T) bool; the loss then takes them as `selected`
    step_selection: Callable | None = None


POLICY_LOSSES: dict[str, PolicyLossSpec] = {}


def register_policy_loss(name: str, aggregations: tuple[str, ...] | None = None, why: str = "",
                         default_clip: tuple[float, float] = (0.2, 0.2), max_eps: float | None = None,
                         why_eps: str = "", step_selection: Callable | None = None):
    """Decorator: make `fn(logp, old_logp, advantages, mask, clip) -> PolicyLoss` selectable as `name`
    (with step_selection, `fn(..., selected=None)`)."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = PolicyLossSpec(fn, aggregations, why, default_clip, max_eps, why_eps, step_selection)
        return fn

    return decorator


def clip_bounds(name: str, low: float | None, high: float | None) -> tuple[float, float]:
    """(eps_low, eps_high) of policy loss `name`: the recipe's values, or the loss's own defaults where unset."""
    default_low, default_high = policy_loss_spec(name).default_clip
    return (default_low if low is None else low), (default_high if high is None else high)


def check_clip(name: str, low: float | None, high: float | None) -> str | None:
    """Why the clip range cannot act as policy loss `name` intends (None when it can)."""
    spec = policy_loss_spec(name)
    eps_low, eps_high = clip_bounds(name, low, high)
    if spec.max_eps is not None and max(eps_low, eps_high) > spec.max_eps:
        return f"eps_low={eps_low}, eps_high={eps_high} are above {spec.max_eps}: {spec.why_eps}"
    return None


def policy_loss_spec(name: str) -> PolicyLossSpec:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


def _check_pair(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor) -> None:
    assert logp.dim() == 2 and old_logp.shape == logp.shape, (logp.shape, old_logp.shape)
    assert advantages.shape in ((logp.shape[0],), logp.shape), (advantages.shape, logp.shape)


def per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages as (B, 1) (one per completion, broadcast over its tokens) or (B, T) as given
    (one per token: on-policy distillation's per-token reverse KL)."""
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1, d = ref - logp. (B, T)."""
    assert logp.shape == ref_logp.shape, (logp.shape, ref_logp.shape)
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """PPO clipped objective as a per-token loss: -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A).

    logp, old_logp: (B, T); advantages: (B,), broadcast over tokens, or (B, T). Returns (B, T).
    eps_high > eps_low is DAPO's clip-higher.
    """
    _check_pair(logp, old_logp, advantages)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = per_token(advantages)  # (B, 1) or (B, T)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped)


def _clipped_tokens(ratio: torch.Tensor, advantages: torch.Tensor, clip: ClipRange) -> torch.Tensor:
    """(B, T) bool: the ratio left the trust region on the side the advantage pushes towards,
    so the clip removed the token's gradient."""
    adv = per_token(advantages)  # (B, 1) or (B, T)
    return ((ratio > 1 + clip.high) & (adv > 0)) | ((ratio < 1 - clip.low) & (adv < 0))


@register_policy_loss("ppo")
def ppo_loss(logp, old_logp, advantages, mask, clip: ClipRange) -> PolicyLoss:
    """PPO's clipped surrogate per token (GRPO's), with clip-higher when clip.high > clip.low."""
    loss = clipped_surrogate(logp, old_logp, advantages, clip.low, clip.high)
    ratio = torch.exp(logp - old_logp).detach()
    return PolicyLoss(loss, {"clip_frac": _clipped_tokens(ratio, advantages, clip)})


@register_policy_loss("dual_clip")
def dual_clip_loss(logp, old_logp, advantages, mask, clip: ClipRange) -> PolicyLoss:
    """Per-token dual-clip PPO loss (Ye et al. 2020, arXiv:1912.09729), as verl's `vanilla` loss.

    With rho = exp(logp - old_logp):
        clipped = max(-rho*A, -clip(rho, 1 - low, 1 + high)*A)   (PPO)
        loss    = min(clipped, -c*A)   where A < 0,   clipped otherwise.
    Why: for A < 0 the PPO term -rho*A grows without bound as rho grows (a token the old policy
    found unlikely but the new one likes), so one stale token can dominate the batch; dual-clip
    caps that loss at -c*A (zero gradient beyond rho = c). Requires c > 1, as in verl.
    Indicators: "clip_frac" (PPO's clip) and "dual_clip_frac" (tokens past the cap).
    """
    if not clip.dual_clip_c > 1.0:
        raise ValueError(f"dual-clip needs dual_clip_c > 1, got {clip.dual_clip_c}")
    adv = per_token(advantages)  # (B, 1) or (B, T)
    ppo = clipped_surrogate(logp, old_logp, advantages, clip.low, clip.high)  # (B, T)
    cap = -clip.dual_clip_c * adv  # (B, 1)
    loss = torch.where(adv < 0, torch.minimum(ppo, cap), ppo)
    ratio = torch.exp(logp - old_logp).detach()
    capped = (adv < 0) & (ppo.detach() > cap)
    return PolicyLoss(loss, {"clip_frac": _clipped_tokens(ratio, advantages, clip), "dual_clip_frac": capped})


@register_policy_loss(
    "gspo", aggregations=("seq-mean-token-mean",),
    why="GSPO's token form gives the sequence gradient only when each completion's tokens are "
        "averaged first, then the completions",
    default_clip=(3e-4, 4e-4), max_eps=0.01,
    why_eps="a length-normalized sequence ratio moves far less than a token's, so a token-sized range never "
            "clips; the GSPO paper (v2, section 5.1) uses eps_low=3e-4, eps_high=4e-4 (leave both unset for those)",
)
def gspo_loss(logp, old_logp, advantages, mask, clip: ClipRange) -> PolicyLoss:
    """Per-token GSPO loss (Zheng et al. 2025, arXiv:2507.18071), the "GSPO-token" form, as verl.

    The sequence ratio is the length-normalized (geometric-mean) likelihood ratio
        s_i = exp( sum_t mask*(logp - old_logp) / max(sum_t mask, 1) ).
    Each token carries s_i,t = sg[s_i] * exp(logp_t - sg[logp_t]): its value is s_i, so every token
    of a completion is clipped together, and its gradient is s_i * grad(logp_t), so averaging the
    (B, T) loss over each completion's tokens then over completions ("seq-mean-token-mean", which
    the registry enforces) gives exactly GSPO's sequence gradient.
    Returns -min(s*A, clip(s, 1 - low, 1 + high)*A) per token. Masked positions carry the same value
    and are dropped by the aggregation. The log-ratio is clamped at 10 before exp, as in verl, so
    a wild sequence cannot overflow. GSPO's clip range is tiny (3e-4/4e-4 in the paper, its defaults
    here; above 0.01 it is refused) because a sequence ratio moves far less than a token ratio.
    Indicator "clip_frac": the tokens of sequences whose ratio the clip removed.
    """
    _check_pair(logp, old_logp, advantages)
    assert mask.shape == logp.shape, (mask.shape, logp.shape)
    if advantages.dim() != 1:
        raise ValueError("gspo clips whole sequences and needs one advantage per completion (B,), got per-token "
                         "advantages; use loss.policy=ppo or dual_clip with per-token advantages")
    m = mask.to(logp.dtype)
    lengths = m.sum(dim=-1).clamp(min=1.0)  # (B,)
    seq_log_ratio = ((logp - old_logp) * m).sum(dim=-1) / lengths  # (B,)
    token_log_ratio = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)  # (B, T), value = seq ratio
    ratio = torch.exp(torch.clamp(token_log_ratio, max=10.0))  # (B, T)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    loss = torch.maximum(-ratio * adv, -torch.clamp(ratio, 1.0 - clip.low, 1.0 + clip.high) * adv)
    return PolicyLoss(loss, {"clip_frac": _clipped_tokens(ratio.detach(), advantages, clip)})


@register_policy_loss("cispo", default_clip=(0.2, 4.0))
def cispo_loss(logp, old_logp, advantages, mask, clip: ClipRange) -> PolicyLoss:
    """CISPO (MiniMax-M1, arXiv:2506.13585; as TRL's `cispo` loss and ScaleRL, arXiv:2510.13786): clip the
    importance weight, not the update.

        loss_t = -sg(min(rho_t, 1 + clip.high)) * A * logp_t,   rho_t = exp(logp_t - old_logp_t)

    Why: PPO's clip zeroes the gradient of a token whose ratio left the range, and the rare tokens that
    start a reflection ("However", "Wait") are those; CISPO keeps every token's gradient and only bounds
    its weight. clip.high defaults to 4.0 here, a weight cap of 5 (TRL's and ScaleRL's epsilon_max = 5);
    there is no lower bound (clip.low is unused), as in TRL and MiniMax-M1's setting.
    Indicator "clip_frac": tokens with A > 0 whose weight was capped (TRL's cispo_clip_ratio).
    """
    _check_pair(logp, old_logp, advantages)
    ratio = torch.exp(logp - old_logp).detach()  # (B, T)
    weight = torch.clamp(ratio, max=1 + clip.high)
    adv = per_token(advantages)  # (B, 1) or (B, T)
    return PolicyLoss(-weight * adv * logp, {"clip_frac": (ratio > 1 + clip.high) & (adv > 0)})


def top_covariance_tokens(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                          ratio: float) -> torch.Tensor:
    """(B, T) bool: the max(1, floor(ratio * n)) unmasked tokens with the largest centered
    covariance term (logp - mean logp) * (A - mean A), means over the n unmasked tokens
    (KL-Cov's selection, Cui et al. 2025, arXiv:2505.22617, as verl's compute_policy_loss_kl_cov).

    Ties go to the earlier position in the flattened batch. No host read: the count stays a tensor.
    """
    valid = mask.bool()  # (B, T)
    adv = per_token(advantages).expand_as(logp).detach().float()  # (B, T)
    lp = logp.detach().float()
    count = valid.sum().clamp(min=1)
    centered_lp = lp - (lp * valid).sum() / count
    centered_adv = adv - (adv * valid).sum() / count
    cov = (centered_lp * centered_adv).masked_fill(~valid, float("-inf")).flatten()  # (B*T,)
    order = torch.sort(cov, descending=True, stable=True).indices
    k = torch.clamp(torch.floor(valid.sum() * ratio), min=1)  # a tensor: no sync
    chosen_in_order = torch.arange(cov.numel(), device=cov.device) < k
    keep = torch.zeros_like(chosen_in_order).scatter(0, order, chosen_in_order)
    return keep.view(logp.shape) & valid


def _kl_cov_selection(old_logp, advantages, mask, clip: ClipRange) -> torch.Tensor:
    return top_covariance_tokens(old_logp, advantages, mask, clip.kl_cov_ratio)


@register_policy_loss("kl_cov", step_selection=_kl_cov_selection)
def kl_cov_loss(logp, old_logp, advantages, mask, clip: ClipRange, selected: torch.Tensor | None = None) -> PolicyLoss:
    """KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
    Language Models", arXiv:2505.22617), as verl's `kl_cov` policy loss.

    With rho = exp(logp - old_logp): every token's loss is -rho*A, unclipped; the tokens with the
    largest covariance between log-prob and advantage (`top_covariance_tokens`, a share
    clip.kl_cov_ratio of them, at least one) add clip.kl_cov_coef * |logp - old_logp|.
    Why: entropy collapses through those few tokens (confident and rewarded); a KL penalty on them
    alone keeps entropy up without clipping every token. The penalty is 0, with zero gradient, while
    logp == old_logp: it acts from the second update on a rollout (train.num_iterations >= 2).
    selected (B, T): the tokens chosen over the whole optimizer step (the trainer passes them: the
    selection on the sampling policy's log-probs of all the step's tokens, so it does not depend on
    how the step is cut; verl selects within each micro-batch on the current log-probs); None
    selects within these rows, on `logp`.
    Indicator "kl_cov_frac": the penalized tokens.
    """
    _check_pair(logp, old_logp, advantages)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    loss = -per_token(advantages) * ratio
    chosen = top_covariance_tokens(logp, advantages, mask, clip.kl_cov_ratio) if selected is None else selected
    penalty = clip.kl_cov_coef * (logp - old_logp).abs()
    return PolicyLoss(torch.where(chosen, loss + penalty, loss), {"kl_cov_frac": chosen})


def policy_loss(name: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: ClipRange, selected: torch.Tensor | None = None) -> PolicyLoss:
    """The registered policy loss `name` per token (B, T), without the KL term, and its indicators.

    logp, old_logp, mask: (B, T); advantages: (B,) or (B, T); selected (B, T): the step's selection of a
    loss with a step_selection (KL-Cov), None for the others.
    """
    spec = policy_loss_spec(name)
    if spec.step_selection is None:
        return spec.fn(logp, old_logp, advantages, mask, clip)
    return spec.fn(logp, old_logp, advantages, mask, clip, selected=selected)


def policy_loss_with_kl(
    name: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: ClipRange,
    beta: float,
) -> PolicyLoss:
    """The registered policy loss `name` plus beta * k3 KL per token (added by `with_kl`).

    logp, old_logp, ref_logp, mask: (B, T); advantages: (B,) or (B, T). The KL term is skipped at beta == 0.
    """
    out = policy_loss(name, logp, old_logp, advantages, mask, clip)
    out.per_token = with_kl(out.per_token, logp, ref_logp, beta)
    return out


def with_kl(per_token: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, beta: float) -> torch.Tensor:
    """per_token + beta * k3 KL(policy || reference) per token (B, T); unchanged at beta == 0. Every
    objective's loss (grpo/objectives) gets its KL term here."""
    if beta == 0:
        return per_token
    if ref_logp is None:
        raise ValueError("beta != 0 needs reference log-probs (ref_logp is None)")
    return per_token + beta * kl_k3(logp, ref_logp)


# ---- aggregation: a sum over the tokens, divided by the step's totals ------------------------------
# Each mode is a numerator summed over rows (so it splits across micro-batches and ranks by addition)
# and a denominator counted over the whole optimizer step: the loss, and its gradient, are the same
# however the step is cut into micro-batches and processes (TRL's "dapo" and verl normalize token-mean
# by the global token count the same way).


def aggregation_counts(mask: torch.Tensor) -> torch.Tensor:
    """What the aggregations divide by, counted on `mask` (B, T): (3,) float64 = (tokens, sequences with at
    least one token, rows). Summed over micro-batches and ranks, they are the step's totals."""
    tokens_per_row = mask.sum(dim=1)
    return torch.stack([tokens_per_row.sum(), (tokens_per_row > 0).sum(), torch.tensor(mask.shape[0])]).double()


def with_entropy_bonus(per_token: torch.Tensor, entropy: torch.Tensor | None, coef: float) -> torch.Tensor:
    """per_token - coef * entropy (B, T): the entropy bonus (verl's entropy_coeff), aggregated with the rest
    of the loss; unchanged at coef == 0. entropy: the policy's entropy at each position, with its gradient."""
    if coef == 0:
        return per_token
    if entropy is None:
        raise ValueError("an entropy bonus needs the policy's entropy (ask the log-prob pass with_entropy=True)")
    return per_token - coef * entropy


# ---- the sampler against the trainer ---------------------------------------------------------------
# The sampler computes its log-probs with other kernels than the trainer (a compiled or bfloat16 decode,
# folded LoRA weights), so the policy that sampled differs a little from the one the loss assumes.

ROLLOUT_CORRECTIONS = ("none", "tis", "mis")


def rollout_correction_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                               mode: str, cap: float) -> torch.Tensor:
    """Importance weights (B, T) on the per-token policy loss for the sampler/trainer mismatch, detached.

    rho_t = exp(trainer_logp_t - sampler_logp_t): the trainer's probability of the sampled token at the
    sampling policy over the sampler's. As TRL defines them (vllm_importance_sampling_mode):
    - "tis", truncated importance sampling, per token (TRL's token_truncate; Yao et al. 2025): min(rho_t, cap);
    - "mis", masked importance sampling, per sequence (TRL's sequence_mask, its default): rho = exp(sum_t
      mask * (trainer - sampler)) over the sequence's tokens, the weight rho on all of them, 0 when rho > cap;
    - "none": 1.
    mask (B, T): the tokens that train (the sum runs over them); masked positions get weight 1 (unused).
    """
    assert trainer_logp.shape == sampler_logp.shape == mask.shape, (trainer_logp.shape, sampler_logp.shape)
    if mode not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"unknown rollout correction {mode!r}; valid: {', '.join(ROLLOUT_CORRECTIONS)}")
    if mode == "none":
        return torch.ones_like(trainer_logp)
    log_ratio = ((trainer_logp - sampler_logp) * mask).detach().float()  # (B, T)
    if mode == "tis":
        weights = torch.exp(log_ratio).clamp(max=cap)
    else:
        sequence = torch.exp(log_ratio.sum(dim=1, keepdim=True))  # (B, 1)
        weights = torch.where(sequence > cap, torch.zeros_like(sequence), sequence).expand_as(log_ratio)
    return torch.where(mask.bool(), weights, torch.ones_like(weights))


def sampler_mismatch(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token (B, T): the k3 estimate of KL(sampler || trainer) at the sampled token, exp(d) - d - 1 with
    d = trainer - sampler (>= 0, 0 where they agree), and the ratio exp(d)."""
    d = (trainer_logp - sampler_logp).detach().float()
    return torch.exp(d) - d - 1, torch.exp(d)


def _seq_mean_token_mean(per_token_loss, mask, counts, max_tokens):
    tokens_per_row = mask.sum(dim=1)  # (B,)
    # An all-masked row has no tokens: it is left out of the mean over sequences.
    row_mean = (per_token_loss * mask).sum(dim=1) / tokens_per_row.clamp(min=1)
    return row_mean.sum() / counts[1].clamp(min=1)


def _token_mean(per_token_loss, mask, counts, max_tokens):
    return (per_token_loss * mask).sum() / counts[0].clamp(min=1)


def _seq_mean_token_sum_norm(per_token_loss, mask, counts, max_tokens):
    if max_tokens is None or max_tokens <= 0:
        raise ValueError(
            "aggregation 'seq-mean-token-sum-norm' needs max_tokens (the max completion length), "
            f"got {max_tokens!r}"
        )
    return (per_token_loss * mask).sum() / (counts[2] * max_tokens)


AGGREGATIONS = {
    "seq-mean-token-mean": _seq_mean_token_mean,  # mean over sequences of each one's token mean (GRPO paper)
    "token-mean": _token_mean,  # mean over all tokens (DAPO)
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,  # token sum / (sequences x max length) (Dr. GRPO)
}


def aggregate_loss(
    per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str, max_tokens: int | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the unmasked tokens (mask (B, T), 1 = counts).

    counts (3,): the totals to divide by (`aggregation_counts` summed over every micro-batch and rank of
    the optimizer step); None divides by this batch's own, which is the whole loss of a batch on its own.
    With the step's totals, the micro-batch losses of every rank sum to the step's loss.
    """
    assert per_token_loss.shape == mask.shape and mask.dim() == 2, (per_token_loss.shape, mask.shape)
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    mask = mask.to(per_token_loss.dtype)
    counts = (aggregation_counts(mask) if counts is None else counts).to(per_token_loss.device, per_token_loss.dtype)
    return AGGREGATIONS[mode](per_token_loss, mask, counts, max_tokens)


def check_policy_loss(name: str, aggregation: str) -> str | None:
    """Why `name` cannot run with `aggregation` (None when it can): a message naming the fix."""
    spec = policy_loss_spec(name)
    if spec.aggregations is None or aggregation in spec.aggregations:
        return None
    return (f"policy loss {name!r} needs aggregation {' or '.join(spec.aggregations)}, got {aggregation!r}: "
            f"{spec.why}")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log softmax(logits)[tokens] without materializing a (B, T, V) float32 log-softmax.

    logits: (B, T, V) any float dtype; tokens: (B, T) int. Returns (B, T) float32.
    logsumexp runs over `chunk_rows` rows at a time, so peak extra memory is (chunk, T, V).
    """
    assert logits.shape[:2] == tokens.shape, (logits.shape, tokens.shape)
    picked = torch.gather(logits, 2, tokens.unsqueeze(-1)).squeeze(-1).float()  # (B, T)
    norms = torch.cat(
        [torch.logsumexp(chunk.float(), dim=-1) for chunk in logits.split(chunk_rows, dim=0)]
    )  # (B, T)
    return picked - norms
