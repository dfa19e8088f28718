"""Stop strings found on the device, without detokenizing every row at every token.

A completion ends at the first token whose decoded text holds a stop string (the text is cut
before it). Decoding each row's tail at each token would cost a tokenizer call per row per
token on the host. Instead each vocabulary token's bytes are known once per tokenizer, each
row keeps its last K bytes on the device (K = the longest stop string's length - 1), and a
decode step asks, for all rows at once, whether a stop string ends inside the newest token:
either inside the token's own bytes, or across the boundary from the row's last K bytes into
the token's first K bytes. Rows it flags are then checked by decoding their tail as before (the
exact test), so a token whose bytes were guessed wrong costs a decode, never a wrong cut.

Token bytes are exact for byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM) and SentencePiece with
byte fallback (Llama-2, Mistral); other tokenizers use each token's own decoded text.
"""

from __future__ import annotations

import functools
import re
import weakref

import torch

_TOKEN_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the printable character standing for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _decoder_kind(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    text = repr(decoder)
    if type(decoder).__name__ == "ByteLevel":
        return "byte_level"
    if "ByteFallback" in text and "Replace" in text:
        return "sentencepiece"
    return "decode"


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each vocabulary id adds to decode(..., skip_special_tokens=True); cached per tokenizer."""
    if tokenizer in _TOKEN_BYTES:
        return _TOKEN_BYTES[tokenizer]
    size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    kind = _decoder_kind(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    if kind == "decode":  # one batched call into the Rust backend, or the slow tokenizer's own decode
        backend = getattr(tokenizer, "backend_tokenizer", None)
        ids = [[i] for i in range(size)]
        texts = backend.decode_batch(ids, skip_special_tokens=False) if backend else [tokenizer.decode(i) for i in ids]
    alphabet = _byte_level_alphabet()
    out = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            out.append(b"")
        elif i in added:
            out.append(added[i].encode("utf-8"))
        elif kind == "byte_level":
            out.append(bytes(alphabet[c] for c in piece) if all(c in alphabet for c in piece) else piece.encode())
        elif kind == "sentencepiece":
            byte = _BYTE_PIECE.match(piece)
            out.append(bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8"))
        else:
            out.append(texts[i].encode("utf-8"))
    _TOKEN_BYTES[tokenizer] = out
    return out


class StopMatcher:
    """Device tensors for `stop_strings` under `tokenizer`; `step` flags the rows whose newest token
    ends a stop string (by bytes), `window` is each row's last K bytes (-1 where there are none)."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], device: torch.device):
        stops = [s.encode("utf-8") for s in stop_strings if s]
        if not stops:
            raise ValueError("StopMatcher needs at least one non-empty stop string")
        self.k = max(1, max(len(s) for s in stops) - 1)
        vocab = token_bytes(tokenizer)
        k = self.k
        heads = torch.full((len(vocab), k), -1, dtype=torch.int16)
        tails = torch.full((len(vocab), k), -1, dtype=torch.int16)
        lengths = torch.tensor([len(b) for b in vocab], dtype=torch.long)
        for i, b in enumerate(vocab):
            if b:
                heads[i, : min(k, len(b))] = torch.tensor(list(b[:k]), dtype=torch.int16)
                tails[i, k - min(k, len(b)):] = torch.tensor(list(b[-k:]), dtype=torch.int16)
        inner = torch.tensor([any(s in b for s in stops) for b in vocab])
        self.heads, self.tails, self.lengths, self.inner = (heads.to(device), tails.to(device),
                                                            lengths.to(device), inner.to(device))
        self.stops = [torch.tensor(list(s), dtype=torch.int16, device=device) for s in stops]

    def empty_window(self, rows: int) -> torch.Tensor:
        return torch.full((rows, self.k), -1, dtype=torch.int16, device=self.heads.device)

    def step(self, window: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """window (A, K), tokens (A,) -> (fired (A,) bool, the new window (A, K))."""
        k = self.k
        head, length = self.heads[tokens], self.lengths[tokens]  # (A, K), (A,)
        joined = torch.cat([window, head], dim=1)  # (A, 2K): the row's last bytes, then the token's first
        fired = self.inner[tokens].clone()
        for stop in self.stops:
            m = stop.numel()
            # starts in the window (i < K) and ends in the token (i + m - 1 >= K); -1 padding never
            # matches. A one-byte stop cannot cross the boundary: `inner` finds it.
            first, last = max(0, k - m + 1), k - 1
            if m < 2 or first > last:
                continue
            windows = joined[:, first : last + m].unfold(1, m, 1)  # (A, last - first + 1, m)
            fired |= (windows == stop).all(dim=-1).any(dim=-1)
        # the last K bytes of window + token: the token's tail if it is long enough, else shifted in
        shift = (length.clamp(max=k).unsqueeze(1) + torch.arange(k, device=tokens.device)).clamp(max=2 * k - 1)
        shifted = joined.gather(1, shift)  # (A, K)
        new_window = torch.where((length >= k).unsqueeze(1), self.tails[tokens], shifted)
        return fired, new_window
