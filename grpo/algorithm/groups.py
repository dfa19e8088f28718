"""Groups: the G consecutive rows of one prompt, and whether they disagree.

Every batch here is B = prompts x G rows, each run of G consecutive rows one prompt's group.
One helper gives the (P, G, ...) view with its shape checks, one says which groups have a
reward spread (a group whose rewards are all equal carries no signal: its advantages are 0).
"""

from __future__ import annotations

import torch


def group_view(values: torch.Tensor, group_size: int, min_size: int = 1) -> torch.Tensor:
    """values (B, ...) as (P, G, ...), P = B / G; raises naming the shapes when B is not P x G.

    min_size: the smallest group the caller can use (2 where completions are compared).
    """
    if values.dim() < 1:
        raise ValueError(f"expected a batch of rows (B, ...), got a scalar of shape {tuple(values.shape)}")
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size} to compare completions, got {group_size}")
    if values.shape[0] % group_size != 0:
        raise ValueError(
            f"batch of {values.shape[0]} rows is not divisible by group_size {group_size}: "
            "each prompt needs exactly group_size completions"
        )
    return values.view(values.shape[0] // group_size, group_size, *values.shape[1:])


def has_spread(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) rewards -> (P,) bool, True where the group's rewards are not all equal.

    Also DAPO's dynamic-sampling filter (arXiv:2503.14476 sec. 3.2): a group without spread has
    zero advantage for every completion, so it only dilutes the batch.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    grouped = group_view(rewards, group_size)  # (P, G)
    return grouped.amax(dim=1) != grouped.amin(dim=1)


def expand_to_rows(per_group: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P, ...) -> (B, ...): each group's value repeated for its G rows."""
    return per_group.repeat_interleave(group_size, dim=0)
