"""The fast paths of the update (shared prompt prefix, chunked and checkpointed LM-head log-probs,
micro-batches, oneDNN linear and fused LoRA layers) leave training unchanged: three real steps of
frozen_logprobs + policy_update are
compared with the same steps written the plain way here: one sequence at a time, the full
prompt + completion forward, a full-vocabulary log_softmax, and the GRPO loss spelled out.
"""

import copy

import pytest
import torch

from grpo.runtime.model import attach_lora, load_model_and_tokenizer, trainable_parameters
from grpo.speedups.onednn_linear import onednn_available, use_onednn_linears
from grpo.rollout import SamplingParams, generate
from grpo.algorithm import ClipRange
from grpo.backends import SingleProcess
from grpo.objectives import LossSettings, Targets
from grpo.objectives.grpo import GrpoObjective
from grpo.objectives.token_credit import TokenCredit
from grpo.rollout.logprobs import LogProbPlan, frozen_logprobs
from grpo.runtime.config import TokensConfig
from grpo.runtime.distributed import World
from grpo.training.update import policy_update

G, BETA, LR = 4, 0.04, 0.05


def plain_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion token | everything before it), one unpadded sequence, (T,)."""
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (P + T, V)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logp[positions, torch.tensor(completion)]


def plain_step(model, optimizer, prompts, completions, advantages) -> float:
    """GRPO with mu = 1 (ratio = 1, detached old log-probs), k3 KL, seq-mean-token-mean per prompt
    group, groups averaged (one micro-batch per prompt), clip to norm 1, SGD."""
    total = 0.0
    for i, prompt in enumerate(prompts):
        row_losses = []
        for j in range(G):
            completion = completions[i * G + j]
            with torch.no_grad(), model.disable_adapter():
                ref = plain_logprobs(model, prompt, completion)
            logp = plain_logprobs(model, prompt, completion)
            ratio = torch.exp(logp - logp.detach())
            kl = torch.exp(ref - logp) - (ref - logp) - 1
            row_losses.append((-ratio * advantages[i * G + j] + BETA * kl).mean())
        loss = torch.stack(row_losses).mean() / len(prompts)
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(trainable_parameters(model), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@pytest.mark.parametrize("onednn", [
    None,
    *(pytest.param(plan, marks=pytest.mark.skipif(not onednn_available(), reason="no oneDNN in this PyTorch"))
      for plan in ("all", "head")),
])
def test_fast_update_matches_plain_per_sequence_update(tiny_model_dir, onednn):
    base, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    fast = attach_lora(base, 4, 8, 0.0, ("q_proj", "v_proj", "up_proj", "down_proj")).train()
    plain = copy.deepcopy(fast)
    if onednn:  # train.py's CPU plans: all linear and LoRA layers on oneDNN, or the head on oneDNN
        assert use_onednn_linears(fast, onednn) > 0  # and the LoRA layers fused on PyTorch's products
    # SGD, not AdamW: Adam's first step is lr * sign(grad), so float noise in a near-zero
    # gradient would flip a weight by a whole lr; SGD keeps the comparison linear in the gradient.
    opt_fast = torch.optim.SGD(trainable_parameters(fast), lr=LR)
    opt_plain = torch.optim.SGD(trainable_parameters(plain), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt_fast, lambda _: 1.0)
    loss = LossSettings("ppo", BETA, ClipRange(0.2, 0.2), "seq-mean-token-mean", max_tokens=10)
    plan = LogProbPlan(temperature=1.0, prompts_per_micro_batch=1)
    objective = GrpoObjective(loss, 10, TokenCredit(TokensConfig()))
    # Prompts of different lengths, so the batch is left-padded and the prefix sharing is exercised.
    prompts = [tokenizer("Question: 12+7?")["input_ids"], tokenizer("Hi")["input_ids"]]
    backend = SingleProcess(fast, None, opt_fast, scheduler, 1.0, World())
    for step in range(3):
        batch = generate(fast, tokenizer, prompts, G, SamplingParams(1.0, 1.0, 10), seeds=[step, 100 + step])
        lengths = batch.completion_mask.sum(1).int().tolist()
        completions = [batch.completion_ids[r, :n].tolist() for r, n in enumerate(lengths)]
        rewards = torch.randn(len(completions), generator=torch.Generator().manual_seed(step))
        grouped = rewards.view(-1, G)
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)

        with backend.reference_logprobs() as reference:
            ref = frozen_logprobs(reference, batch, plan)
        targets = Targets(batch.completion_mask, advantages, rewards, ref_logp=ref)
        stats, _ = policy_update(backend.logprobs, backend, batch, targets, objective, loss, plan, World())
        expected = plain_step(plain, opt_plain, prompts, completions, advantages)

        assert stats["loss"] == pytest.approx(expected, abs=1e-5), f"step {step}"
        for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
            if a.requires_grad:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"step {step}: {name}")


def test_bfloat16_weights_give_the_float32_update_up_to_rounding(tiny_model_dir):
    """`model.dtype: bfloat16` (the fast setting on CPUs with bf16 matrix units): base weights in
    bf16, LoRA adapters kept in float32 by peft; one update step points where the float32 one does."""
    modules = ("q_proj", "v_proj", "up_proj", "down_proj")
    models = {}
    for dtype in ("float32", "bfloat16"):
        base, tokenizer = load_model_and_tokenizer(tiny_model_dir, dtype=dtype)
        models[dtype] = attach_lora(base, 4, 8, 0.0, modules).train()
        generator = torch.Generator().manual_seed(0)
        for p in trainable_parameters(models[dtype]):  # the same nonzero adapter on both
            p.data.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    assert all(p.dtype == torch.float32 for p in trainable_parameters(models["bfloat16"]))
    assert next(models["bfloat16"].get_base_model().parameters()).dtype == torch.bfloat16

    loss = LossSettings("ppo", BETA, ClipRange(0.2, 0.2), "seq-mean-token-mean", max_tokens=10)
    plan = LogProbPlan(temperature=1.0, prompts_per_micro_batch=1)
    objective = GrpoObjective(loss, 10, TokenCredit(TokensConfig()))
    prompts = [tokenizer("Question: 12+7?")["input_ids"], tokenizer("Hi")["input_ids"]]
    batch = generate(models["float32"], tokenizer, prompts, G, SamplingParams(1.0, 1.0, 10), seeds=[0, 1])
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -1.0, -1.0])
    losses, deltas = {}, {}
    for dtype, model in models.items():
        params = trainable_parameters(model)
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=1.0)
        backend = SingleProcess(model, None, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                                0.0, World())
        with backend.reference_logprobs() as reference:
            ref = frozen_logprobs(reference, batch, plan)
        targets = Targets(batch.completion_mask, advantages, advantages, ref_logp=ref)
        losses[dtype] = policy_update(backend.logprobs, backend, batch, targets, objective, loss, plan, World())[0]["loss"]
        deltas[dtype] = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)])
    assert deltas["float32"].norm() > 0
    cosine = torch.nn.functional.cosine_similarity(deltas["float32"], deltas["bfloat16"], dim=0)
    assert cosine > 0.99, cosine
    assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=2e-2)
