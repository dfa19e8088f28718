"""The label-free self-certainty rank (grpo/research/label_free.py) against hand values."""

import torch

from grpo.research.label_free import within_group_rank


def test_within_group_rank_hand_values():
    # group 1 (0.3, 0.1, 0.2): ranks 2, 0, 1 of G-1 = 2 -> 1, 0, 0.5
    # group 2 (0.5, 0.5, 0.9): the two 0.5 share ranks 0 and 1 -> 0.5 each / 2 = 0.25; 0.9 -> 1
    # group 3 all equal -> 0.5
    values = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.5, 0.9, 4.0, 4.0, 4.0])
    expected = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.25, 1.0, 0.5, 0.5, 0.5])
    torch.testing.assert_close(within_group_rank(values, 3), expected)
