"""On-policy distillation (reverse-KL advantages, TOPD/POPD horizons), DistIL's surrogate and the
teacher's inputs, against values computed by hand."""

import math

import pytest
import torch

from grpo.algorithm.loss import ClipRange, ppo_loss
from grpo.objectives.distil import SOLUTION_NOTE, feedback_batch, feedback_notes, teacher_prompt
from grpo.research.distil_rich_feedback import (
    cost_to_go, forward_cross_entropy, position_baseline, sequence_advantages,
)
from grpo.research.on_policy_distillation import reverse_kl_advantages, rollout_horizon
from grpo.rollout import SamplingParams, generate
from grpo.rollout.logprobs import completion_logprobs, completion_logprobs_with
from grpo.runtime.model import load_model_and_tokenizer


def test_reverse_kl_advantages_by_hand():
    # teacher - student on counted tokens: (-1) - (-2) = 1; (-3) - (-1) = -2; masked -> 0
    out = reverse_kl_advantages(torch.tensor([[-2.0, -1.0, -5.0]]), torch.tensor([[-1.0, -3.0, -0.1]]),
                                torch.tensor([[1.0, 1.0, 0.0]]))
    assert out.tolist() == [[1.0, -2.0, 0.0]] and not out.requires_grad


@pytest.mark.parametrize(
    "mode, step, expected",
    [
        pytest.param("full", 3, 64, id="full"),
        pytest.param("truncated", 1, 7, id="topd-ceil-6.4"),
        pytest.param("truncated", 50, 7, id="topd-every-step"),
        pytest.param("progressive", 1, 7, id="popd-start"),
        pytest.param("progressive", 2, 21, id="popd-0.325"),  # 0.1 + 0.9 x 1/4 = 0.325 -> 20.8 -> 21
        pytest.param("progressive", 3, 36, id="popd-0.55"),  # 35.2 -> 36
        pytest.param("progressive", 5, 64, id="popd-full"),
        pytest.param("progressive", 9, 64, id="popd-after"),
    ],
)
def test_rollout_horizon(mode, step, expected):
    assert rollout_horizon(mode, 64, step, 0.1, 5) == expected


def test_rollout_horizon_is_at_least_one_token_and_checks_its_arguments():
    assert rollout_horizon("truncated", 8, 1, 0.01, 0) == 1
    with pytest.raises(ValueError, match="fraction"):
        rollout_horizon("truncated", 8, 1, 0.0, 0)
    with pytest.raises(ValueError, match="growth_steps"):
        rollout_horizon("progressive", 8, 1, 0.5, 0)


def test_forward_cross_entropy_by_hand():
    # q = (0.5, 0.5), student probs (0.25, 0.75): -(0.5 ln 0.25 + 0.5 ln 0.75) = 0.5 (1.38629 + 0.28768) = 0.83698
    student = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert forward_cross_entropy(student, torch.tensor([[[0.5, 0.5]]])).item() == pytest.approx(0.83698, abs=1e-5)


def test_cost_to_go_and_position_baseline_by_hand():
    cost = torch.tensor([[1.0, 2.0, 3.0], [4.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # row 0: counted 1, 2, (0) -> after t: 2, 0, 0; row 1: 4, 1, 1 -> 2, 1, 0
    future = cost_to_go(cost, mask)
    assert future.tolist() == [[2.0, 0.0, 0.0], [2.0, 1.0, 0.0]]
    # one group of 2: position 0: (2 + 2) / 2 = 2; position 1: (0 + 1) / 2 = 0.5; position 2: row 1 only -> 0
    assert position_baseline(future, mask, 2).tolist() == [[2.0, 0.5, 0.0], [2.0, 0.5, 0.0]]


def test_distil_sequence_advantages_and_their_gradient_by_hand():
    # One group of 2 rows, 2 tokens each, K = 2 teacher tokens. Teacher q = (0.5, 0.5) everywhere.
    # Student log-probs of the teacher's tokens: row 0: ln(0.25, 0.75) at both positions -> H = 0.83698 each;
    # row 1: ln(0.5, 0.5) -> H = ln 2 = 0.69315 each.
    # Future cost: row 0: (0.83698, 0); row 1: (0.69315, 0); baseline at position 0: 0.76507, at 1: 0.
    # Credit (C - b): row 0: +0.07192 at t=0; row 1: -0.07192 at t=0; 0 at t=1. Advantage A = -w * credit.
    student = torch.log(torch.tensor([[0.25, 0.75], [0.25, 0.75], [0.5, 0.5], [0.5, 0.5]])).view(2, 2, 2)
    teacher = torch.full((2, 2, 2), 0.5)
    local = forward_cross_entropy(student, teacher)
    h0, h1 = 0.83698, math.log(2)
    torch.testing.assert_close(local, torch.tensor([[h0, h0], [h1, h1]]), atol=1e-5, rtol=0)
    credit = (h0 - h1) / 2
    advantages = sequence_advantages(local, torch.ones(2, 2), 2, future_weight=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[-credit, 0.0], [credit, 0.0]]), atol=1e-5, rtol=0)
    # Through a policy loss at ratio 1 (on-policy): d/dlogp = -A = w * credit, the surrogate's sequence
    # gradient: the token that led to the costlier future is pushed down.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    ppo_loss(logp, logp.detach(), advantages, torch.ones(2, 2), ClipRange()).per_token.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[credit, 0.0], [-credit, 0.0]]), atol=1e-5, rtol=0)
    # future_weight 0: no sequence term
    assert sequence_advantages(local, torch.ones(2, 2), 2, future_weight=0.0).abs().max() == 0


def test_distil_gradient_reaches_the_student_distribution():
    # d H / d logpi_k = -q_k: the student is pulled towards every token the teacher likes, not only the sampled one
    student = torch.log(torch.tensor([[[0.25, 0.75]]])).requires_grad_()
    forward_cross_entropy(student, torch.tensor([[[0.9, 0.1]]])).sum().backward()
    torch.testing.assert_close(student.grad, torch.tensor([[[-0.9, -0.1]]]))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tokenizer


def test_completion_logprobs_with_gathers_and_ranks_the_full_softmax(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 2+2?")["input_ids"], tokenizer("Q")["input_ids"]]
    batch = generate(model, tokenizer, prompts, 2, SamplingParams(max_new_tokens=5), seeds=[0, 1])
    ids = torch.randint(0, model.config.vocab_size, batch.completion_ids.shape + (3,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = completion_logprobs_with(model, batch, 0.7, gather_ids=ids, top_k=4, with_hidden=True)
        plain = completion_logprobs(model, batch, 0.7)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(out.logp[mask], plain[mask], atol=1e-5, rtol=1e-5)
    # a naive pass over row 0's whole sequence
    seq = prompts[0] + batch.completion_ids[0].tolist()
    with torch.no_grad():
        full = (model(input_ids=torch.tensor([seq])).logits[0] / 0.7).log_softmax(-1)
    p, n = len(prompts[0]), int(batch.completion_mask[0].sum())
    naive = full[p - 1 : p - 1 + n]  # (n, V)
    torch.testing.assert_close(out.gathered[0, :n], naive.gather(1, ids[0, :n]), atol=1e-5, rtol=1e-5)
    top = naive.topk(4, dim=-1)
    assert torch.equal(out.topk_ids[0, :n], top.indices)
    torch.testing.assert_close(out.topk_probs[0, :n], top.values.softmax(-1), atol=1e-5, rtol=1e-5)
    assert out.hidden.shape == batch.completion_ids.shape + (model.config.hidden_size,) and not out.hidden.requires_grad


def test_teacher_notes_and_prompts(tiny):
    _, tokenizer = tiny
    rows = [{"question": "What is 2 + 3?", "solution": "2 + 3 = 5\n#### The final answer is 5", "prompt": "p"}] * 2
    notes = feedback_notes(rows, ["a", "b"], code_feedback=None)
    assert notes == [SOLUTION_NOTE.format(solution=rows[0]["solution"])] * 2
    text = teacher_prompt(rows[0], notes[0], 0, "plain", None)
    assert text.startswith("Question: What is 2 + 3?\n\n(A worked solution") and text.endswith("Answer:")
    # code rows: the sandbox's verdict per completion, as comment lines before the code prompt
    code_rows = [{"prompt": "def f(x):\n", "test": "def check(c): assert c(1) == 2", "entry_point": "f"}] * 2
    verdicts = feedback_notes(code_rows, ["    return 2", "    return 1"],
                              code_feedback=lambda completions, rows: ["All tests passed.", "failed: assert"])
    assert teacher_prompt(code_rows[1], verdicts[1], 0, "plain", None).startswith(
        "# An earlier attempt at this task was run against its tests. Result:\n# failed: assert\ndef f(x):")
    # the completions stay; a shared note gives one prompt per group, differing notes one per row
    batch = generate(tiny[0], tokenizer, [tokenizer("Q")["input_ids"]], 2, SamplingParams(max_new_tokens=3), seeds=[0])
    shared = feedback_batch(batch, rows, notes, 0, "plain", tokenizer)
    assert shared.group_size == 2 and shared.prompt_ids.shape[0] == 1
    assert torch.equal(shared.completion_ids, batch.completion_ids)
    per_row = feedback_batch(batch, code_rows, verdicts, 0, "plain", tokenizer)
    assert per_row.group_size == 1 and per_row.prompt_ids.shape[0] == 2
    assert (per_row.prompt_mask.sum(1) > 0).all() and per_row.prompt_mask[:, -1].all()  # left-padded


def test_the_log_prob_pass_returns_the_policys_entropy_with_its_gradient(tiny):
    """with_entropy: -sum p log p of softmax(logits / T) at each completion position, as a naive full pass
    computes it, and differentiable (the entropy bonus trains through it)."""
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 2+2?")["input_ids"]]
    batch = generate(model, tokenizer, prompts, 2, SamplingParams(max_new_tokens=4), seeds=[0])
    out = completion_logprobs_with(model, batch, 0.7, with_entropy=True)
    seq = prompts[0] + batch.completion_ids[0].tolist()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0] / 0.7
    p = len(prompts[0])
    probs = logits[p - 1 : p - 1 + batch.completion_ids.shape[1]].softmax(-1)
    naive = -(probs * probs.log()).sum(-1)
    n = int(batch.completion_mask[0].sum())
    torch.testing.assert_close(out.entropy[0, :n].detach(), naive[:n], atol=1e-4, rtol=1e-4)
    assert out.entropy.requires_grad
