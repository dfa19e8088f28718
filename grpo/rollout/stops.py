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
_MATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(stops, device): StopMatcher}
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


def stop_matcher(tokenizer, stop_strings: tuple[str, ...], device: torch.device | str) -> "StopMatcher":
    """The StopMatcher of (tokenizer, stop_strings, device), built once per tokenizer and kept while the
    tokenizer lives (its tables take a pass over the vocabulary: 151k tokens for Qwen)."""
    held = _MATCHERS.setdefault(tokenizer, {})
    key = (tuple(stop_strings), str(torch.device(device)))
    if key not in held:
        held[key] = StopMatcher(tokenizer, stop_strings, device)
    return held[key]


def _byte_matrix(packed: bytes, k: int) -> torch.Tensor:
    """(V, K) int16 from V * K packed bytes."""
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8).view(-1, k).to(torch.int16)


class StopMatcher:
    """Device tensors for `stop_strings` under `tokenizer`; `step` flags the rows whose newest token
    ends a stop string (by bytes), `window` is each row's last K bytes (-1 where there are none).
    Make it through `stop_matcher`, which keeps one per tokenizer."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], device: torch.device | str):
        stops = [s.encode("utf-8") for s in stop_strings if s]
        if not stops:
            raise ValueError("StopMatcher needs at least one non-empty stop string")
        self.k = k = max(1, max(len(s) for s in stops) - 1)
        vocab = token_bytes(tokenizer)
        lengths = torch.tensor([len(b) for b in vocab], dtype=torch.long)  # (V,)
        kept = lengths.clamp(max=k).unsqueeze(1)  # (V, 1) bytes of each token in its head and tail
        column = torch.arange(k)
        # first K bytes, left-aligned; last K bytes, right-aligned; -1 where the token has none
        heads = _byte_matrix(b"".join(b[:k].ljust(k, b"\0") for b in vocab), k)
        tails = _byte_matrix(b"".join(b[-k:].rjust(k, b"\0") for b in vocab), k)
        heads = heads.masked_fill(column >= kept, -1)
        tails = tails.masked_fill(column < k - kept, -1)
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
