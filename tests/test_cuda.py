"""Checks that need a CUDA GPU (marked `cuda`; skipped without one). scripts/gpu_check.py runs them
with the multi-GPU runs; on CPU the same code paths are covered by the other tests."""

import pytest
import torch

import train
from grpo.rollout import SamplingParams, completion_logprobs, generate
from grpo.runtime.model import attach_lora, load_model_and_tokenizer
from tests.test_train import adapter_weights, tiny_args

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_greedy_tokens_and_logprobs_on_cuda_match_cpu(tiny_model_dir):
    prompts = None
    outputs = {}
    for device in ("cpu", "cuda"):
        model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device=device)
        model = attach_lora(model.eval(), 4, 8, 0.0, ("q_proj", "v_proj"))
        prompts = prompts or [tokenizer("Question: 1+1?")["input_ids"], tokenizer("Hi")["input_ids"]]
        batch = generate(model, tokenizer, prompts, 2, SamplingParams(temperature=0, max_new_tokens=8))
        outputs[device] = (batch.completion_ids, completion_logprobs(model, batch).cpu())
    assert torch.equal(outputs["cpu"][0], outputs["cuda"][0])
    torch.testing.assert_close(outputs["cpu"][1], outputs["cuda"][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("extra", [
    pytest.param(["model.dtype=bfloat16"], id="bfloat16"),
    pytest.param(["model.dtype=float32"], id="float32-tf32"),
])
def test_training_steps_on_cuda(tiny_model_dir, tmp_path, extra):
    summary = train.main(tiny_args(tiny_model_dir, tmp_path, 2, *extra))
    assert summary["after"] is not None
    lora_b = {k: v for k, v in adapter_weights(tmp_path).items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())


def test_qlora_loads_its_4bit_weights_on_the_gpu_and_trains(tiny_model_dir_128, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the bitsandbytes package")
    train.main(tiny_args(tiny_model_dir_128, tmp_path, 1, "model.load_in_4bit=true", "model.dtype=bfloat16"))
    model, _ = load_model_and_tokenizer(tiny_model_dir_128, dtype="bfloat16", load_in_4bit=True, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
