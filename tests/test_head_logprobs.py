"""frozen_head_logprobs: the log-prob of a token and its gradient in the hidden state, made in the
forward pass, against values computed by hand and against autograd through a full log_softmax."""

import pytest
import torch

from grpo.speedups.head_logprobs import can_fuse_head, frozen_head_logprobs


@pytest.mark.parametrize("temperature, token, expected_logp, expected_grad", [
    # W = [[1], [2]] (V=2, H=1), h = 0.5.
    # tau 1: logits [0.5, 1.0]; Z = e^0.5 + e^1 = 4.36700; logp[1] = 1 - ln Z = -0.474077;
    #   p = [0.377541, 0.622459]; grad = W[1] - p.W = 2 - 1.622459 = 0.377541.
    pytest.param(1.0, 1, -0.474077, 0.377541, id="temperature-1"),
    # tau 2: logits [0.25, 0.5]; Z = 2.932748; logp[0] = 0.25 - ln Z = -0.825939;
    #   p = [0.437824, 0.562176]; grad = (W[0] - p.W) / 2 = (1 - 1.562176) / 2 = -0.281088.
    pytest.param(2.0, 0, -0.825939, -0.281088, id="temperature-2"),
])
def test_logprob_and_gradient_by_hand(temperature, token, expected_logp, expected_grad):
    weight = torch.tensor([[1.0], [2.0]])
    hidden = torch.tensor([[[0.5]]], requires_grad=True)  # (B=1, T=1, H=1)
    logp = frozen_head_logprobs(hidden, weight, torch.tensor([[token]]), temperature)
    logp.sum().backward()
    assert logp.item() == pytest.approx(expected_logp, abs=1e-5)
    assert hidden.grad.item() == pytest.approx(expected_grad, abs=1e-5)


def textbook(hidden, weight, tokens, temperature):
    logits = (hidden @ weight.T).float() / temperature  # (B, T, V)
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(
    "chunk_tokens",
    [1, 6, 64],  # 35 tokens: one per chunk, a ragged last chunk, one chunk
    ids=["chunk-per-token", "ragged-chunks", "single-chunk"],
)
@pytest.mark.parametrize(
    "onednn",
    [False, True],  # float32 products on oneDNN (bfloat16 runs F.linear either way)
    ids=["linear", "onednn"],
)
def test_matches_autograd_through_a_full_log_softmax(dtype, tol, chunk_tokens, onednn):
    torch.manual_seed(0)
    weight = torch.randn(50, 16).to(dtype)
    hidden = torch.randn(5, 7, 16).to(dtype)
    tokens = torch.randint(0, 50, (5, 7))
    upstream = torch.randn(5, 7)  # a loss's gradient in the log-probs, ragged in sign and size

    fused_h = hidden.clone().requires_grad_()
    fused = frozen_head_logprobs(fused_h, weight, tokens, 0.7, chunk_tokens, onednn=onednn)
    (fused * upstream).sum().backward()
    plain_h = hidden.clone().requires_grad_()
    plain = textbook(plain_h, weight, tokens, 0.7)
    (plain * upstream).sum().backward()

    assert fused.dtype == torch.float32 and fused.shape == (5, 7)
    torch.testing.assert_close(fused, plain, atol=tol, rtol=tol)
    assert fused_h.grad.dtype == dtype
    torch.testing.assert_close(fused_h.grad.float(), plain_h.grad.float(), atol=tol, rtol=tol)
    with torch.no_grad():  # the log-probs alone, no gradient made
        torch.testing.assert_close(frozen_head_logprobs(hidden, weight, tokens, 0.7, chunk_tokens, onednn=onednn),
                                   fused)


def test_refuses_a_trainable_head_and_says_which_heads_fuse():
    weight = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="frozen"):
        frozen_head_logprobs(torch.randn(1, 2, 3), weight, torch.zeros(1, 2, dtype=torch.long))

    head = torch.nn.Linear(3, 4, bias=False)
    assert not can_fuse_head(head)  # trainable
    head.weight.requires_grad_(False)
    assert can_fuse_head(head)
    assert not can_fuse_head(torch.nn.Linear(3, 4, bias=True).requires_grad_(False))
    head.weight.ds_id = 7  # a ZeRO-3 shard: gathered only inside module calls
    assert not can_fuse_head(head)


def test_masked_positions_are_skipped_zero_and_get_no_gradient():
    torch.manual_seed(1)
    weight, tokens = torch.randn(30, 8), torch.randint(0, 30, (3, 4))
    hidden = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])  # full, ragged, all padding
    full_h, masked_h = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    full = frozen_head_logprobs(full_h, weight, tokens)
    masked = frozen_head_logprobs(masked_h, weight, tokens, mask=mask)
    (full * mask).sum().backward()
    masked.sum().backward()
    assert masked[mask == 0].eq(0).all()
    torch.testing.assert_close(masked[mask == 1], full[mask == 1])
    torch.testing.assert_close(masked_h.grad, full_h.grad)  # both 0 on padding
    assert masked_h.grad[2].eq(0).all()

    nothing = torch.zeros(3, 4, dtype=torch.long)
    empty_h = hidden.clone().requires_grad_()
    out = frozen_head_logprobs(empty_h, weight, tokens, mask=nothing)
    out.sum().backward()  # still a graph, so a micro-batch of padding does not break backward()
    assert out.eq(0).all() and empty_h.grad.eq(0).all()
