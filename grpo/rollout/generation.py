"""Sampling G completions per prompt with a KV cache shared within the group.

Each prompt is encoded once for its G completions (few-shot prompts are long and identical
within a group); the decode steps run on the rows still decoding, through the cache of
`grpo.speedups.GroupDecodeCache`. Finished completions leave the decode batch at once.

Shapes: N = prompts, G = group size, B = N * G rows, P = padded prompt length, V = vocab.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grpo import speedups
from grpo.runtime.hf_compat import returned_cache
from grpo.rollout.batch import RolloutBatch, left_pad
from grpo.rollout.sampling import SamplingParams, next_token_stats, sample_by_prompt


def _ends_with_stop(tokenizer, tokens: list[int], stop_strings: tuple[str, ...], window: int) -> bool:
    tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
    return any(s in tail for s in stop_strings)


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop_strings if s in text]
    return text[: min(cuts)] if cuts else text


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_token_lists: list[list[int]],
    group_size: int,
    params: SamplingParams,
    seeds: Sequence[int] | None = None,
    share_prompt_kv: bool = True,
) -> RolloutBatch:
    """Sample `group_size` completions for each prompt with a KV cache shared within the group.

    share_prompt_kv: decode with the prompt's keys/values held once per group
    (grpo/speedups/prefix_attention.py) where the model allows; False repeats them for every row.

    seeds: one per prompt (None = torch's global RNG). Each prompt's rows draw from their own
    generator, so a prompt's completions do not depend on which prompts share its batch: a step
    split across ranks samples what one process would.
    """
    device = next(model.parameters()).device
    generators = None if seeds is None else [torch.Generator(device).manual_seed(s) for s in seeds]
    eos_ids = _eos_ids(tokenizer, model)
    prompt_ids, prompt_mask = left_pad(prompt_token_lists, tokenizer.pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    padded = not bool(prompt_mask.all())
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask if padded else None,
        position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)  # (B, V)
    num_rows = logits.shape[0]
    decode = speedups.GroupDecodeCache(model, returned_cache(out), prompt_mask, group_size,
                                       params.max_new_tokens, share_prompt_kv)
    positions = prompt_mask.sum(1).repeat_interleave(group_size)  # (B,) next position
    tokens: list[list[int]] = [[] for _ in range(num_rows)]
    entropies: list[list[float]] = [[] for _ in range(num_rows)]
    certainties: list[list[float]] = [[] for _ in range(num_rows)]
    truncated = torch.ones(num_rows, dtype=torch.bool)
    window = max((len(s) for s in params.stop_strings), default=0) + 2

    with decode.attention_context():
        for step in range(params.max_new_tokens):
            active = decode.rows  # (A,) rows still decoding, in cache order
            next_tokens = sample_by_prompt(logits, active // group_size, params, generators)  # (A,)
            entropy, certainty = next_token_stats(logits, params.temperature)  # (A,), (A,)
            keep = torch.ones(len(active), dtype=torch.bool)
            step_stats = zip(active.tolist(), next_tokens.tolist(), entropy.tolist(), certainty.tolist())
            for slot, (row, token, ent, cert) in enumerate(step_stats):
                tokens[row].append(token)
                entropies[row].append(ent)
                certainties[row].append(cert)
                if token in eos_ids or (
                    params.stop_strings and _ends_with_stop(tokenizer, tokens[row], params.stop_strings, window)
                ):
                    keep[slot] = False
                    truncated[row] = False
            if not keep.any() or step == params.max_new_tokens - 1:
                break
            if not keep.all():  # finished rows leave the batch: no wasted decode work
                index = keep.nonzero().squeeze(1).to(device)
                decode.keep(index)
                next_tokens, positions = next_tokens[index], positions[index]
            out = model(input_ids=next_tokens.unsqueeze(1), position_ids=positions.unsqueeze(1),
                        **decode.step_inputs())
            positions = positions + 1
            logits = out.logits[:, -1]

    width = max(len(t) for t in tokens)
    completion_ids = torch.full((num_rows, width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((num_rows, width))
    token_entropy = torch.zeros((num_rows, width))
    token_certainty = torch.zeros((num_rows, width))
    for row, toks in enumerate(tokens):
        completion_ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        completion_mask[row, : len(toks)] = 1.0
        token_entropy[row, : len(toks)] = torch.tensor(entropies[row])
        token_certainty[row, : len(toks)] = torch.tensor(certainties[row])
    texts = [
        cut_at_stop(tokenizer.decode(t, skip_special_tokens=True), params.stop_strings) for t in tokens
    ]
    return RolloutBatch(
        prompt_ids=prompt_ids.cpu(),
        prompt_mask=prompt_mask.cpu(),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=truncated,
        texts=texts,
        group_size=group_size,
        token_entropy=token_entropy,
        token_certainty=token_certainty,
    )


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return {i for i in ids if i is not None}
