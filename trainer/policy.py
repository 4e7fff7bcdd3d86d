"""The policy: a tiny causal LM built from a transformers config, or any local checkpoint.

The embedded default (a 2-layer Llama over the char tokenizer, ~0.14M
parameters) exists so the whole RLVR loop runs offline on 2 CPU cores in
minutes. A supervised warm-up on the task generators lifts it from chance to
a non-zero but clearly imperfect pass rate, which is where RL has signal to
work with (an all-wrong or all-right group has zero GRPO advantage).

A real model loads from a local path with the same code (`model_path`);
nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rollout_bandits.trainer.tasks import Problem, Task
from rollout_bandits.trainer.tokenizer import TOKENIZER_FILE, CharTokenizer
from rollout_bandits.validation import check_choice, check_field_types, check_int, check_str, fail

ARCHS = ("llama", "gpt2")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Measured on 2 shared CPU cores, default PolicyConfig (137,728 params), batch 64, difficulty 1,
# greedy pass rate on 200 held-out problems per family
# (`rollout-bandits warmup --steps 1000 --seed S`), ~20 s of training on 1 thread
# (2 threads: 19-166 s depending on other load), evaluation 0.2 s for all seven families:
#   seed 0: add .20 mul .20 mod .38 countdown .34 sort .43 parity .32 count .27
#   seed 1: add .68 mul .24 mod .25 countdown .60 sort .28 parity .29 count .39
#   seed 2: add .12 mul .23 mod .40 countdown .61 sort .47 parity .36 count .41
# Families learn at very different speeds alone (sort: .11 at 50 steps, 1.0 at 200; add: .09 at
# 400, .41 at 800), hence the weights: a uniform mix leaves add near 0 while count is solved.
# Parity at chance is ~.5 whatever the model knows: a weak RL signal by design.
DEFAULT_WARMUP_STEPS = 1000
DEFAULT_WARMUP_WEIGHTS: dict[str, float] = {
    "add": 5.0, "mul": 6.0, "mod": 2.0, "countdown": 2.0, "sort": 1.5, "parity": 1.0, "count": 0.25,
}


@dataclass
class PolicyConfig:
    """Either a tiny model from scratch (arch and sizes) or `model_path` to a local HF checkpoint."""

    arch: str = "llama"
    n_layers: int = 2
    hidden: int = 64
    n_heads: int = 4
    intermediate: int | None = None  # default 4 * hidden
    max_length: int = 64
    seed: int = 0
    model_path: str | None = None
    gguf_file: str | None = None  # a GGUF file inside model_path (transformers de-quantizes it; needs `gguf`)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        o = "PolicyConfig"
        if isinstance(self.model_path, os.PathLike):
            self.model_path = os.fspath(self.model_path)
        check_field_types(self)
        check_choice(o, "arch", self.arch, ARCHS)
        for name in ("n_layers", "hidden", "n_heads", "max_length"):
            check_int(o, name, getattr(self, name), 1)
        if self.hidden % self.n_heads:
            fail(o, "hidden", f"{self.hidden} with n_heads={self.n_heads}", "hidden divisible by n_heads")
        check_int(o, "intermediate", self.intermediate, 1, allow_none=True)
        check_int(o, "seed", self.seed, 0, 2**31 - 1)
        check_str(o, "model_path", self.model_path, allow_none=True)
        check_str(o, "gguf_file", self.gguf_file, allow_none=True)
        if self.gguf_file is not None and self.model_path is None:
            fail(o, "gguf_file", repr(self.gguf_file), "None without a model_path (the file lives in that folder)")
        check_choice(o, "dtype", self.dtype, tuple(_DTYPES))


def _hf_config(config: PolicyConfig, tok: CharTokenizer):
    import transformers

    inter = config.intermediate or 4 * config.hidden
    common = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id,
                  eos_token_id=tok.eos_id, tie_word_embeddings=True)
    if config.arch == "llama":
        return transformers.LlamaConfig(
            hidden_size=config.hidden, intermediate_size=inter, num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads,
            max_position_embeddings=config.max_length, rms_norm_eps=1e-5, **common,
        )
    return transformers.GPT2Config(
        n_embd=config.hidden, n_inner=inter, n_layer=config.n_layers, n_head=config.n_heads,
        n_positions=config.max_length, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
    )


def build_policy(config: PolicyConfig | None = None):
    """(model, tokenizer). From `config.model_path` when set (local files only), else a fresh tiny LM."""
    import transformers

    config = config or PolicyConfig()
    dtype = _DTYPES[config.dtype]
    if config.model_path is not None:
        path = os.fspath(config.model_path)
        if not os.path.isdir(path):
            raise ValueError(
                f"PolicyConfig.model_path: {path!r} does not exist or is not a directory; "
                "expected a local Hugging Face checkpoint folder (nothing is downloaded)"
            )
        gguf = {} if config.gguf_file is None else {"gguf_file": config.gguf_file}
        if gguf and not os.path.isfile(os.path.join(path, config.gguf_file)):
            fail("PolicyConfig", "gguf_file", f"{config.gguf_file!r}, which is not a file in {path!r}",
                 "the name of a GGUF file inside model_path")
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, **gguf)
            if os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
                tok = CharTokenizer.load(os.path.join(path, TOKENIZER_FILE))
            else:
                tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, **gguf)
        except ImportError as e:
            raise ValueError(f"PolicyConfig.gguf_file: loading a GGUF file needs the gguf package ({e}); "
                             "pip install 'rollout-bandits[gguf]'") from e
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"PolicyConfig.model_path: could not load a checkpoint from {path!r}: {e}") from e
        return model, tok

    tok = CharTokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = transformers.AutoModelForCausalLM.from_config(_hf_config(config, tok))
    return model.to(dtype), tok


def save_policy(model, tokenizer, path: str | os.PathLike) -> None:
    """A folder `build_policy(PolicyConfig(model_path=path))` reads back."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if isinstance(tokenizer, CharTokenizer):
        tokenizer.save(os.path.join(path, TOKENIZER_FILE))
    else:
        tokenizer.save_pretrained(path)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily run torch ops on n intra-op threads (None: leave as is).

    A ~0.1M-parameter model's ops are too small to split across cores; on a
    shared 2-core machine two spinning threads made warm-up ~70x slower than
    one (33 s vs 0.5 s for 30 steps, measured), so the helpers default to 1.
    """
    if n is None:
        yield
        return
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: found {n!r}, expected a positive int or None")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ generate
def _encode_prompts(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.encode_batch(prompts, add_bos=True, padding_side="left")
    old = getattr(tokenizer, "padding_side", "left")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = old
    return enc["input_ids"], enc["attention_mask"]


def _ids(tokenizer) -> tuple[int, int]:
    pad = tokenizer.pad_id if isinstance(tokenizer, CharTokenizer) else tokenizer.pad_token_id
    eos = tokenizer.eos_id if isinstance(tokenizer, CharTokenizer) else tokenizer.eos_token_id
    return pad if pad is not None else eos, eos


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int | None = None,
    batch_size: int = 256,
    threads: int | None = 1,
) -> list[str]:
    """Completions (text after the prompt, up to EOS) via `model.generate`.

    A simple reference path for evaluation; the trainer's generation backends
    (which also keep token log-probs) live elsewhere.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: found {max_new_tokens}, expected >= 1")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature: found {temperature}, expected > 0 when sampling")
    pad, eos = _ids(tokenizer)
    was_training = model.training
    model.eval()
    out: list[str] = []
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[]), torch_threads(threads):
            if seed is not None:
                torch.manual_seed(seed)
            for s in range(0, len(prompts), batch_size):
                ids, mask = _encode_prompts(tokenizer, prompts[s : s + batch_size])
                gen = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                    do_sample=not greedy, temperature=None if greedy else temperature, top_k=None, top_p=None,
                    pad_token_id=pad, eos_token_id=eos,
                )
                new = gen[:, ids.shape[1]:]
                if isinstance(tokenizer, CharTokenizer):
                    out.extend(tokenizer.decode_batch(new))
                else:
                    out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


def _max_new_tokens(task: Task, tokenizer) -> int:
    # +1 for EOS; a subword tokenizer may need more tokens than characters.
    n = task.max_answer_chars + 1
    return n if isinstance(tokenizer, CharTokenizer) else 2 * n + 8


def evaluate_pass_rate(
    model, tokenizer, task: Task, n: int = 200, greedy: bool = True, seed: int = 0,
    temperature: float = 1.0, split: str = "eval", threads: int | None = 1,
    problems: Sequence[Problem] | None = None,
) -> float:
    """Fraction of n held-out problems answered correctly (noiseless verdict); `problems`: these
    problems instead of n sampled from `split`."""
    if problems is None:
        if n < 1:
            raise ValueError(f"n: found {n}, expected >= 1")
        problems = task.sample(n, split=split, seed=seed)
    n = len(problems)
    if n < 1:
        raise ValueError("problems: found none, expected at least one")
    comps = generate(model, tokenizer, [p.prompt for p in problems], _max_new_tokens(task, tokenizer),
                     greedy=greedy, temperature=temperature, seed=seed, threads=threads)
    return sum(task.is_correct(p, c) for p, c in zip(problems, comps, strict=True)) / n


# -------------------------------------------------------------------- warm-up
def _sft_batch(tokenizer: CharTokenizer, problems: Sequence[Problem]) -> tuple[torch.Tensor, ...]:
    """Right-padded bos+prompt+answer+eos, labels -100 except on answer and EOS."""
    seqs, n_prompt = [], []
    for p in problems:
        prompt = tokenizer.encode(p.prompt, add_bos=True)
        seqs.append(prompt + tokenizer.encode(p.answer, add_eos=True))
        n_prompt.append(len(prompt))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), tokenizer.pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (s, k) in enumerate(zip(seqs, n_prompt, strict=True)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        labels[r, k : len(s)] = ids[r, k : len(s)]
    return ids, mask, labels


def sft_warmup(
    model,
    tokenizer,
    tasks: Sequence[Task],
    steps: int = DEFAULT_WARMUP_STEPS,
    weights: Sequence[float] | dict[str, float] | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    log_every: int = 0,
    log: Callable[[str], None] = print,
    threads: int | None = 1,
) -> dict:
    """Teacher-forced SFT on prompt+answer (loss on answer tokens only), tasks mixed by `weights`.

    Deliberately short: the point is a policy that is right sometimes, not a
    solved task. Families learn at very different speeds (count and sort in a
    few hundred steps, addition in thousands), so `weights` (per task, or a
    {family: weight} dict; default DEFAULT_WARMUP_WEIGHTS, uniform for unknown
    names) lets one short run leave every family imperfect. `threads`: see
    `torch_threads` (1 is fastest for the tiny default on a shared CPU).
    Returns {"losses", "seconds", "steps"}.
    """
    if not isinstance(tokenizer, CharTokenizer):
        raise ValueError("sft_warmup: expected the package CharTokenizer (the warm-up is for the embedded policy)")
    if not tasks:
        raise ValueError("tasks: found an empty sequence, expected at least one Task")
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"sft_warmup: found steps={steps}, batch_size={batch_size}, lr={lr}; "
                         "expected steps >= 0, batch_size >= 1, lr > 0")
    if weights is None:
        weights = DEFAULT_WARMUP_WEIGHTS
    if isinstance(weights, dict):
        w = [float(weights.get(t.name, 1.0)) for t in tasks]
    else:
        w = [float(x) for x in weights]
    if len(w) != len(tasks) or any(not (x >= 0 and math.isfinite(x)) for x in w) or sum(w) <= 0:
        raise ValueError(f"weights: found {weights!r}, expected {len(tasks)} finite non-negative weights, "
                         "not all zero (or a {family: weight} dict)")
    with torch_threads(threads):
        return _sft_loop(model, tokenizer, tasks, steps, w, batch_size, lr, seed, weight_decay,
                         max_grad_norm, log_every, log)


def _sft_loop(model, tokenizer, tasks, steps, w, batch_size, lr, seed, weight_decay, max_grad_norm,
              log_every, log) -> dict:
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )
    rng = random.Random(f"sft:{seed}")
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        counts = [0] * len(tasks)
        for i in rng.choices(range(len(tasks)), weights=w, k=batch_size):
            counts[i] += 1
        problems: list[Problem] = []
        for t, k in zip(tasks, counts, strict=True):
            if k:
                problems.extend(t.sample(k, split="train", seed=rng.getrandbits(32)))
        ids, mask, labels = _sft_batch(tokenizer, problems)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(out.loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            log(f"sft step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f}")
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - t0, "steps": steps}


__all__ = [
    "ARCHS",
    "DEFAULT_WARMUP_STEPS",
    "DEFAULT_WARMUP_WEIGHTS",
    "PolicyConfig",
    "build_policy",
    "evaluate_pass_rate",
    "generate",
    "num_params",
    "save_policy",
    "sft_warmup",
    "torch_threads",
]
