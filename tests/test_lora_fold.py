"""lora_folded_for_sampling: decoding with W + s B A gives the adapter's logits and tokens, and
the frozen weights come back bit for bit (the reference model must not drift)."""

import pytest
import torch

from grpo.runtime.model import attach_lora, load_model_and_tokenizer
from grpo.speedups.lora_fold import lora_folded_for_sampling
from grpo.rollout import SamplingParams, generate

PROMPT = torch.tensor([[65, 66, 67, 68]])


def lora_model(tiny_model_dir, dtype=torch.float32):
    base, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = attach_lora(base.to(dtype), 4, 8, 0.0, ("q_proj", "v_proj", "up_proj", "down_proj")).eval()
    with torch.no_grad():  # a trained-looking adapter: B starts at zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, tokenizer


def frozen_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def test_folded_decoding_matches_the_adapter_and_restores_the_weights(tiny_model_dir):
    model, tokenizer = lora_model(tiny_model_dir)
    before = frozen_weights(model)
    with torch.no_grad():
        adapter_logits = model(input_ids=PROMPT).logits
        with model.disable_adapter():
            base_logits = model(input_ids=PROMPT).logits
        assert (adapter_logits - base_logits).abs().max() > 1e-2  # the adapter matters here
        with lora_folded_for_sampling(model):
            folded_logits = model(input_ids=PROMPT).logits
            folded = generate(model, tokenizer, [[65, 66, 67]], 2, SamplingParams(temperature=0, max_new_tokens=6))
        torch.testing.assert_close(folded_logits, adapter_logits, atol=1e-5, rtol=1e-5)
        plain = generate(model, tokenizer, [[65, 66, 67]], 2, SamplingParams(temperature=0, max_new_tokens=6))
        assert folded.completion_ids.tolist() == plain.completion_ids.tolist()
        after = frozen_weights(model)
        assert all(torch.equal(before[n], after[n]) for n in before)
        assert torch.equal(model(input_ids=PROMPT).logits, adapter_logits)  # the adapter is live again


def test_weights_come_back_when_decoding_fails(tiny_model_dir):
    model, _ = lora_model(tiny_model_dir)
    before = frozen_weights(model)
    with pytest.raises(RuntimeError, match="boom"), lora_folded_for_sampling(model):
        raise RuntimeError("boom")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if not p.requires_grad)


def test_bfloat16_weights_are_not_folded(tiny_model_dir):
    # Folding into bfloat16 would round a small adapter away: the model decodes as it is.
    model, _ = lora_model(tiny_model_dir, torch.bfloat16)
    with torch.no_grad():
        adapter_logits = model(input_ids=PROMPT).logits
        with lora_folded_for_sampling(model):
            assert torch.equal(model(input_ids=PROMPT).logits, adapter_logits)
            assert not model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
