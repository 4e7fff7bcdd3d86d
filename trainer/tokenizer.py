"""A character-level tokenizer that ships with the package.

The embedded policy is tiny and must run offline, so its vocabulary is fixed
in code (no download, no training): every character the task prompts and
answers use, plus what short math answers need. The ids never change between
versions, so a saved checkpoint stays readable.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Order matters (ids are positions): append new characters at the end only.
DEFAULT_CHARS = (
    string.digits
    + "+-*/%=()<>,.:;?!^_|&#$@~'\"[]{}\\"
    + string.ascii_lowercase
    + string.ascii_uppercase
    + " \n"
)
_FORMAT = "rollout_bandits.char_tokenizer/v1"


@dataclass
class CharTokenizer:
    """Fixed char vocabulary with pad/bos/eos/unk ids 0..3.

    `unknown="error"` raises on a character outside the vocabulary (the
    default: silently mapping text to <unk> would hide a prompt bug);
    `unknown="unk"` maps it to <unk> for free text such as math prompts.
    """

    chars: str = DEFAULT_CHARS
    unknown: str = "error"

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars):
            dup = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise ValueError(f"CharTokenizer.chars: found duplicates {dup!r}, expected distinct characters")
        if self.unknown not in ("error", "unk"):
            raise ValueError(f"CharTokenizer.unknown: found {self.unknown!r}, expected 'error' or 'unk'")
        self._stoi = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(self.chars)}
        self._itos = list(SPECIAL_TOKENS) + list(self.chars)

    # ------------------------------------------------------------------ ids
    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def __len__(self) -> int:
        return self.vocab_size

    # -------------------------------------------------------------- encode
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text: found {type(text).__name__}, expected a str")
        ids = [self.bos_id] if add_bos else []
        for pos, c in enumerate(text):
            i = self._stoi.get(c)
            if i is None:
                if self.unknown == "error":
                    raise ValueError(
                        f"text: character {c!r} at position {pos} is not in the vocabulary "
                        "(use CharTokenizer(unknown='unk') to map it to <unk>)"
                    )
                i = self.unk_id
            ids.append(i)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True, stop_at_eos: bool = True) -> str:
        """Text of `ids`; by default everything from the first EOS on is dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids: found id {i}, expected ids in [0, {self.vocab_size})")
            if i < len(SPECIAL_TOKENS):
                if not skip_special:
                    out.append(self._itos[i])
                continue
            out.append(self._itos[i])
        return "".join(out)

    def encode_batch(
        self,
        texts: Sequence[str],
        add_bos: bool = True,
        add_eos: bool = False,
        padding_side: str = "left",
        max_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L] int64, attention_mask [B, L] int64). Left padding suits generation.

        A text longer than `max_length` is an error, never silently cut.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: found {padding_side!r}, expected 'left' or 'right'")
        if isinstance(texts, str):
            raise ValueError("texts: found a str, expected a sequence of str")
        seqs = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        if not seqs:
            raise ValueError("texts: found an empty sequence, expected at least one text")
        L = max(len(s) for s in seqs)
        if max_length is not None and L > max_length:
            i = max(range(len(seqs)), key=lambda k: len(seqs[k]))
            raise ValueError(f"texts[{i}]: {L} tokens, expected at most max_length={max_length}")
        ids = torch.full((len(seqs), max(L, 1)), self.pad_id, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            if not s:
                continue
            sl = slice(L - len(s), L) if padding_side == "left" else slice(0, len(s))
            ids[r, sl] = torch.tensor(s, dtype=torch.int64)
            mask[r, sl] = 1
        return ids, mask

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special: bool = True) -> list[str]:
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.decode(r, skip_special=skip_special) for r in rows]

    # ---------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary to a JSON file (atomically: temp file + rename)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": _FORMAT, "special_tokens": list(SPECIAL_TOKENS), "chars": self.chars,
                       "unknown": self.unknown}, f, ensure_ascii=False)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer file: {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"tokenizer file {path!r}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"tokenizer file {path!r}: found format {d.get('format') if isinstance(d, dict) else d!r}, "
                             f"expected {_FORMAT!r}")
        if tuple(d.get("special_tokens", ())) != SPECIAL_TOKENS:
            raise ValueError(f"tokenizer file {path!r}: special tokens {d.get('special_tokens')!r}, "
                             f"expected {list(SPECIAL_TOKENS)!r}")
        return cls(chars=d["chars"], unknown=d.get("unknown", "error"))


TOKENIZER_FILE = "char_tokenizer.json"


class HFTokenizerIds:
    """The CharTokenizer calls the RL loop makes (ids in, ids out), over a Hugging Face tokenizer,
    so a local checkpoint by path trains with the same loop."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        eos = hf_tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer: the checkpoint's tokenizer has no eos_token_id; RL needs one to end answers")
        self.eos_id = int(eos)
        self.pad_id = int(hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else eos)
        self.bos_id = hf_tokenizer.bos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self.hf(text, add_special_tokens=False)["input_ids"])
        if add_bos and self.bos_id is not None:
            ids = [int(self.bos_id)] + ids
        return ids + [self.eos_id] if add_eos else ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = False,
                     padding_side: str = "left", max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        L = max(len(s) for s in seqs)
        if max_length is not None and L > max_length:
            raise ValueError(f"texts: {L} tokens, expected at most max_length={max_length}")
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            cols = slice(L - len(s), L) if padding_side == "left" else slice(0, len(s))
            ids[r, cols] = torch.tensor(s, dtype=torch.int64)
            mask[r, cols] = 1
        return ids, mask

    def decode(self, ids, skip_special: bool = True, stop_at_eos: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.hf.decode(ids, skip_special_tokens=skip_special)


def token_ids_api(tokenizer) -> CharTokenizer | HFTokenizerIds:
    return tokenizer if isinstance(tokenizer, CharTokenizer) else HFTokenizerIds(tokenizer)


__all__ = ["CharTokenizer", "DEFAULT_CHARS", "HFTokenizerIds", "SPECIAL_TOKENS", "TOKENIZER_FILE", "token_ids_api"]
