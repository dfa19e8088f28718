"""Sampling G completions per prompt, with the decode loop kept on the device.

Each prompt is encoded once for its G completions (few-shot prompts are long and identical
within a group); the decode steps then run on the rows still decoding, through the decode cache
`grpo.speedups.decode_cache` gives (the prompt's keys/values kept once per group).

Per decode step the loop reads nothing back to the host between its checkpoints: tokens,
entropies and self-certainties go into preallocated (B, T) device buffers; every row draws with
a counter-based uniform of (its prompt's seed, its slot in the group, the position), so all
prompts sample in one call; EOS and stop strings are found on the device (grpo/rollout/stops.py).
Every `sync_every` steps the loop looks: rows whose newest token may end a stop string are
checked by decoding their tail (the exact test), finished rows leave the batch, and it stops
when none is left. On CPU it looks at every step (a read costs nothing there and finished rows
leave at once); on an accelerator every 8 steps (each read waits for the device). The buffers are
read back once at the end, and each completion is decoded once for its text.

Shapes: N = prompts, G = group size, B = N * G rows, A = rows still in the batch, P = padded
prompt length, T = max_new_tokens, V = vocab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from grpo import speedups
from grpo.rollout.batch import RolloutBatch, left_pad
from grpo.rollout.sampling import SamplingParams, counter_uniforms, next_token_stats, sample_tokens
from grpo.rollout.stops import stop_matcher
from grpo.runtime.hf_compat import cache_argument, returned_cache
from grpo.speedups.kv_cache import is_plain_filled_layer


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop_strings if s in text]
    return text[: min(cuts)] if cuts else text


@dataclass
class ContextCache:
    """The keys/values of each row's context (every id it was conditioned on so far), kept between the turns
    of an agent rollout so that a turn encodes only the ids its row gained since (grpo/rollout/agent.py).

    keys, values: per layer (R, Hkv, L, D); mask (R, L) long, 0 where a row has padding (at its start and
    after each turn's shorter rows). Never written in place: a turn's prompt pass makes new tensors.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor

    def rows(self, index: torch.Tensor) -> ContextCache:
        """The context of rows `index` (R',), in that order."""
        index = index.to(self.mask.device)
        return ContextCache([k[index] for k in self.keys], [v[index] for v in self.values], self.mask[index])

    def as_cache(self):
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(zip(self.keys, self.values)):
            cache.update(keys, values, layer)
        return cache


def generate(model, tokenizer, prompt_token_lists: list[list[int]], group_size: int, params: SamplingParams,
             seeds: Sequence[int] | None = None, share_prompt_kv: bool = True, *, sync_every: int | None = None,
             compiled: bool = False, abort=None) -> RolloutBatch:
    """Sample `group_size` completions for each prompt with a KV cache shared within the group (see
    generate_turn, which this is without a carried context)."""
    return generate_turn(model, tokenizer, prompt_token_lists, group_size, params, seeds, share_prompt_kv,
                         sync_every=sync_every, compiled=compiled, abort=abort, keep_context=False)[0]


@torch.no_grad()
def generate_turn(
    model,
    tokenizer,
    prompt_token_lists: list[list[int]],
    group_size: int,
    params: SamplingParams,
    seeds: Sequence[int] | None = None,
    share_prompt_kv: bool = True,
    *,
    context: ContextCache | None = None,
    sync_every: int | None = None,
    compiled: bool = False,
    abort=None,
    keep_context: bool = True,
) -> tuple[RolloutBatch, ContextCache | None]:
    """Sample `group_size` completions for each prompt with a KV cache shared within the group.

    seeds: one per prompt (None = torch's global generator). A prompt's rows draw uniforms that
    depend only on (its seed, the row's slot in the group, the position), so a prompt's
    completions do not depend on which prompts share its batch: a step split across ranks samples
    what one process would.
    share_prompt_kv: decode with the prompt's keys/values held once per group, read once per group
    by a grouped-query attention (grpo/speedups/prefix_attention.py), where the model allows; False
    repeats them for every row and decodes through the model's own attention.
    sync_every: decode steps between the loop's host reads (default: 1 on CPU, 8 elsewhere).
    compiled: decode steps through torch.compile over buffers the model keeps for later rollouts
    (grpo/speedups/compiled_decode.py), always with the prompt's keys/values once per group; the
    first call per shape compiles, later ones reuse it.
    abort() -> bool: asked at each of the loop's looks; True stops the decode there (a stop request: the
    caller abandons the partial batch).
    context: the keys/values of what each row saw before (one row per prompt, group_size 1);
    prompt_token_lists then holds only each row's ids after it (at least one each).
    keep_context: return the context cache (False: None, and the prompt pass's keys/values are freed
    as soon as the decode no longer needs them).
    Returns the batch with the sampler's log-prob of each sampled token (sampler_logprobs; its prompt
    ids are the ids encoded here), and the context cache of the prompts as encoded here (the carried
    context followed by the new ids; None where the model's cache is not plain per-layer keys/values).
    """
    device = next(model.parameters()).device
    sync_every = sync_every or (1 if device.type == "cpu" else 8)
    if context is not None and (group_size != 1 or not all(prompt_token_lists)
                                or context.mask.shape[0] != len(prompt_token_lists)):
        raise ValueError("generate_turn with a context: one row per prompt (group_size 1), each with new ids")
    prompt_ids, new_mask = left_pad(prompt_token_lists, tokenizer.pad_token_id)
    prompt_ids, new_mask = prompt_ids.to(device), new_mask.to(device)
    # The whole mask: the context's, then the new ids' (left-padded: each row's last id is the last column)
    prompt_mask = new_mask if context is None else torch.cat([context.mask.to(device), new_mask], dim=1)
    padded = not bool(prompt_mask.all())
    past = {} if context is None else cache_argument(model, context.as_cache())
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask if padded else None,
        position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0)[:, -prompt_ids.shape[1]:],
        use_cache=True,
        logits_to_keep=1,
        **past,
    )
    cache = returned_cache(out)
    layers = getattr(cache, "layers", None)
    kept = ContextCache([layer.keys for layer in layers], [layer.values for layer in layers], prompt_mask) if (
        keep_context and isinstance(layers, list) and layers
        and all(is_plain_filled_layer(layer) for layer in layers)) else None
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)  # (B, V)
    num_rows, max_tokens = logits.shape[0], params.max_new_tokens
    decode = speedups.decode_cache(model, cache, prompt_mask, group_size, max_tokens, share_prompt_kv, compiled)
    positions = prompt_mask.sum(1).repeat_interleave(group_size)  # (A,) next position of each active row

    # Per-row results, written on the device; a row's entries past its length are never read.
    tokens = torch.full((num_rows, max_tokens), tokenizer.pad_token_id, dtype=torch.long, device=device)
    entropies = torch.zeros((num_rows, max_tokens), device=device)
    certainties = torch.zeros((num_rows, max_tokens), device=device)
    logprobs = torch.zeros((num_rows, max_tokens), device=device)
    lengths = torch.full((num_rows,), max_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)  # ended by EOS or a confirmed stop string
    fired = torch.zeros((num_rows, max_tokens), dtype=torch.bool, device=device)  # may end a stop string
    looked = _Look(tokenizer, params.stop_strings, num_rows)
    eos_ids = torch.tensor([] if params.ignore_eos else sorted(_eos_ids(tokenizer, model)), dtype=torch.long,
                           device=device)
    stops = stop_matcher(tokenizer, params.stop_strings, device) if any(params.stop_strings) else None
    window = stops.empty_window(num_rows) if stops else None  # (A, K) each active row's last bytes
    row_seeds = None if seeds is None else torch.tensor(list(seeds), dtype=torch.long, device=device).repeat_interleave(
        group_size)  # (B,)
    slots = torch.arange(num_rows, device=device) % group_size  # (B,)

    with decode.attention_context():
        for step in range(max_tokens):
            rows = decode.rows  # (A,) original row index of each active row
            uniforms = None if row_seeds is None else counter_uniforms(row_seeds[rows], slots[rows], step)
            next_tokens = sample_tokens(logits, params.temperature, params.top_p, uniforms)  # (A,)
            entropy, certainty, logprob = next_token_stats(logits, params.temperature, next_tokens)  # (A,) x3
            live = ~finished[rows]  # rows that finished since the last look still decode until they leave
            tokens[rows, step] = torch.where(live, next_tokens, tokens[rows, step])
            entropies[rows, step] = torch.where(live, entropy, 0.0)
            certainties[rows, step] = torch.where(live, certainty, 0.0)
            logprobs[rows, step] = torch.where(live, logprob, 0.0)
            ended = live & torch.isin(next_tokens, eos_ids)
            lengths[rows] = torch.where(ended, step + 1, lengths[rows])
            finished[rows] = finished[rows] | ended
            if stops is not None:
                hit, window = stops.step(window, next_tokens)
                fired[rows, step] = hit & live & ~ended
            last = step == max_tokens - 1
            if (step + 1) % sync_every and not last:
                logits = decode.logits(next_tokens, positions)
                positions = positions + 1
                continue
            # ---- the loop's look (one read): confirm stop strings, drop finished rows, stop when none is left
            keep = looked.look(tokens, fired, finished, lengths, step + 1)
            if not keep or last or (abort is not None and abort()):
                break
            if decode.compacts and len(keep) < len(looked.active):  # finished rows leave: no wasted work
                index = torch.tensor(keep, device=device)
                decode.keep(index)
                next_tokens, positions = next_tokens[index], positions[index]
                window = window[index] if window is not None else None
                looked.active = [looked.active[i] for i in keep]
            logits = decode.logits(next_tokens, positions)
            positions = positions + 1

    return _batch(tokenizer, params, prompt_ids, new_mask, group_size, tokens, entropies, certainties,
                  logprobs, lengths, finished), kept


class _Look:
    """What the loop knows on the host at its looks: each row's tokens so far (read a stretch of
    columns at a time), which rows have finished, and which are still in the decode batch."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], num_rows: int):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        # tokens decoded for the exact test: as many as the longest stop string has bytes, and a margin
        self.window = max((len(s.encode()) for s in stop_strings), default=0) + 1
        self.tokens: list[list[int]] = [[] for _ in range(num_rows)]
        self.active = list(range(num_rows))  # original row of each position in the decode batch
        self.read_to = 0

    def look(self, tokens, fired, finished, lengths, stop: int) -> list[int]:
        """Read columns [read_to, stop) of the tokens and stop flags, and the finished flags (one read);
        end each flagged row at its first flag whose decoded tail holds a stop string (the exact
        test; a flag before an EOS in the same stretch wins); return the positions in the decode
        batch of the rows that go on."""
        start, width = self.read_to, stop - self.read_to
        block = torch.cat([tokens[:, start:stop], fired[:, start:stop].long(), finished.long().unsqueeze(1)], dim=1)
        ended, done = {}, set()
        for row, values in enumerate(block.tolist()):
            self.tokens[row].extend(values[:width])
            if values[-1]:
                done.add(row)
            for offset, flag in enumerate(values[width : 2 * width]):
                if flag and self._tail_has_stop(row, start + offset):
                    ended[row] = start + offset + 1
                    break
        self.read_to = stop
        if ended:  # written back to the device (no read)
            index = torch.tensor(list(ended), device=tokens.device)
            lengths[index] = torch.tensor(list(ended.values()), device=tokens.device)
            finished[index] = True
        return [i for i, row in enumerate(self.active) if row not in done and row not in ended]

    def _tail_has_stop(self, row: int, end: int) -> bool:
        tail = self.tokenizer.decode(self.tokens[row][max(0, end + 1 - self.window) : end + 1], skip_special_tokens=True)
        return any(s in tail for s in self.stop_strings)


def _batch(tokenizer, params, prompt_ids, prompt_mask, group_size, tokens, entropies, certainties, logprobs,
           lengths, finished) -> RolloutBatch:
    """Read the device buffers back once; each completion decoded once for its text."""
    lengths_list, finished_list = lengths.tolist(), finished.tolist()
    width = max(lengths_list)
    tokens, entropies, certainties, logprobs = (x[:, :width].cpu() for x in (tokens, entropies, certainties, logprobs))
    rows = tokens.tolist()
    texts = []
    for row, n in enumerate(lengths_list):
        text = tokenizer.decode(rows[row][:n], skip_special_tokens=True)
        if not finished_list[row] and any(s in text for s in params.stop_strings if s):
            # The byte-level check missed a stop string the decoded text holds (a tokenizer whose
            # decode is not its tokens' bytes): end the row where today's per-token test would have.
            n = _first_stop_end(tokenizer, rows[row][:n], params.stop_strings)
            lengths_list[row], finished_list[row] = n, True
            text = tokenizer.decode(rows[row][:n], skip_special_tokens=True)
        texts.append(cut_at_stop(text, params.stop_strings))
    lengths = torch.tensor(lengths_list)
    mask = (torch.arange(width) < lengths.unsqueeze(1)).float()  # (B, T)
    pad = tokenizer.pad_token_id
    return RolloutBatch(
        prompt_ids=prompt_ids.cpu(),
        prompt_mask=prompt_mask.cpu(),
        completion_ids=torch.where(mask.bool(), tokens, torch.full_like(tokens, pad)),
        completion_mask=mask,
        truncated=~torch.tensor(finished_list, dtype=torch.bool),
        texts=texts,
        group_size=group_size,
        token_entropy=entropies * mask,
        token_certainty=certainties * mask,
        sampler_logprobs=logprobs * mask,
    )


def _first_stop_end(tokenizer, tokens: list[int], stop_strings: tuple[str, ...]) -> int:
    """The shortest prefix whose decoded text holds a stop string (its length), by bisection."""
    low, high = 1, len(tokens)
    while low < high:
        middle = (low + high) // 2
        text = tokenizer.decode(tokens[:middle], skip_special_tokens=True)
        if any(s in text for s in stop_strings if s):
            high = middle
        else:
            low = middle + 1
    return low


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return {i for i in ids if i is not None}
