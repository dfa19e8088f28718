"""The decode paths on a CUDA GPU (marked `cuda`; skipped without one; scripts/gpu_check.py runs them):
the shared-prefix attention and the compiled step (CUDA graphs) give the CPU's tokens, replay without
CUDA-graph skips or recompiles across an evaluation's chunks, read nothing back per decode step, and in
bfloat16 the sampler's log-probs agree with the trainer's."""

import pytest
import torch
from torch._dynamo.utils import counters

from grpo.rollout import SamplingParams, completion_logprobs, generate
from grpo.runtime.model import attach_lora, load_model_and_tokenizer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def prompt(start: int, length: int) -> list[int]:
    return [65 + (start + i) % 50 for i in range(length)]


def lora_model(model_dir, device, dtype="float32"):
    """The tiny model with a non-zero LoRA adapter (so it takes part), made on the CPU from one seed
    (the same weights whatever the device), then moved."""
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype)
    torch.manual_seed(0)
    model = attach_lora(model.eval(), 4, 8, 0.0, ("q_proj", "v_proj"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model.to(device).eval(), tokenizer


@pytest.fixture(scope="module")
def cuda_model(tiny_model_dir):
    """One float32 model for the compiled tests: its compiled step and buffers carry over between them."""
    return lora_model(tiny_model_dir, "cuda")


@pytest.mark.parametrize("options", [
    pytest.param({}, id="shared-prefix"),
    pytest.param({"share_prompt_kv": False}, id="repeated-cache"),
    pytest.param({"compiled": True}, id="compiled-cuda-graphs"),
])
def test_cuda_decoding_gives_the_cpu_tokens_and_the_trainers_logprobs(tiny_model_dir, cuda_model, options):
    prompts = [prompt(0, 14), prompt(9, 4), prompt(3, 30)]
    # greedy: float sums in another order must not flip a draw whose uniform sits at a boundary
    params = SamplingParams(temperature=0, max_new_tokens=16, stop_strings=("\n",))
    cpu_model, tokenizer = lora_model(tiny_model_dir, "cpu")
    model, _ = cuda_model
    batches = {"cpu": generate(cpu_model, tokenizer, prompts, 2, params),
               "cuda": generate(model, tokenizer, prompts, 2, params, **options)}
    assert torch.equal(batches["cpu"].completion_ids, batches["cuda"].completion_ids)
    batch = batches["cuda"]
    mask = batch.completion_mask.bool()
    trainer = completion_logprobs(model, batch).cpu()
    torch.testing.assert_close(batch.sampler_logprobs[mask], trainer[mask], atol=1e-4, rtol=1e-4)


def test_compiled_decode_replays_cuda_graphs_without_skips_or_recompiles(cuda_model):
    model, tokenizer = cuda_model
    params = SamplingParams(temperature=0, max_new_tokens=12)
    chunks = [[prompt(0, 10), prompt(1, 7), prompt(2, 12)], [prompt(3, 9), prompt(4, 20), prompt(5, 3)],
              [prompt(6, 200), prompt(7, 5)]]  # an evaluation's chunks: the last smaller, one prompt longer
    skips = counters["inductor"]["cudagraph_skips"]
    for index, chunk in enumerate(chunks):
        compiled = generate(model, tokenizer, chunk, 1, params, compiled=True)
        assert torch.equal(compiled.completion_ids, generate(model, tokenizer, chunk, 1, params).completion_ids)
        if index == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs, "an evaluation chunk recompiled the decode step"
    assert counters["inductor"]["cudagraph_skips"] == skips, "the compiled decode step did not run as a CUDA graph"


@pytest.mark.parametrize("compiled", [pytest.param(False, id="eager"), pytest.param(True, id="compiled")])
def test_cuda_decode_steps_do_not_wait_for_the_gpu(cuda_model, compiled):
    from tests.test_decode_paths import assert_decode_steps_read_nothing

    assert_decode_steps_read_nothing(*cuda_model, compiled)


@pytest.mark.parametrize("compiled", [pytest.param(False, id="eager"), pytest.param(True, id="compiled")])
def test_bfloat16_sampler_logprobs_agree_with_the_trainers(tiny_model_dir, compiled):
    model, tokenizer = lora_model(tiny_model_dir, "cuda", dtype="bfloat16")
    prompts = [prompt(i, 20 + 7 * i) for i in range(4)]
    params = SamplingParams(temperature=1.0, max_new_tokens=32)
    batch = generate(model, tokenizer, prompts, 8, params, seeds=list(range(4)), compiled=compiled)
    mask = batch.completion_mask.bool()
    gap = (batch.sampler_logprobs[mask] - completion_logprobs(model, batch).float().cpu()[mask]).abs()
    assert gap.mean() < 0.02, (gap.mean(), gap.max())
