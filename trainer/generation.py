"""Generation backends behind one interface, and the training-time log-prob forward.

Both backends return `GeneratedRollouts`: flat response tokens + offsets with
the behaviour log-probs (of the sampling distribution, temperature applied)
and entropies, ready to become a `RolloutBatch` once the verifier has scored
them. A response runs up to and including its first EOS; one without EOS is
truncated.

- `hf`: transformers `generate` with KV cache (CPU and GPU), top-k/top-p off so
  the behaviour log-probs are those of the distribution actually sampled.
- `vllm`: optional extra `[vllm]`, `LLM.generate` with `n` samples and
  `logprobs`; imported lazily. vLLM reports top-k log-probs only, so the
  entropy stream is the entropy of the renormalized top-k (documented
  approximation). Only exercised where vLLM is installed; the test suite
  does not install it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout_bandits.batch import RolloutBatch
from rollout_bandits.validation import check_choice, check_field_types, check_float, check_int

GENERATION_BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class GenerationConfig:
    backend: str = "hf"
    max_new_tokens: int = 12
    temperature: float = 1.0
    vllm_logprobs: int = 20  # top-k log-probs vLLM returns per token (entropy approximation)

    def __post_init__(self) -> None:
        o = "GenerationConfig"
        check_field_types(self)
        check_choice(o, "backend", self.backend, GENERATION_BACKENDS)
        check_int(o, "max_new_tokens", self.max_new_tokens, 1)
        check_float(o, "temperature", self.temperature, 0.0, lo_open=True)
        check_int(o, "vllm_logprobs", self.vllm_logprobs, 1)


@dataclass
class GeneratedRollouts:
    """G responses to each of P prompts, flat; rollout i answers prompt `prompt_index[i]`."""

    response_ids: torch.Tensor  # [T] int64
    offsets: torch.Tensor  # [N+1] int64
    logprobs: torch.Tensor  # [T] float32, behaviour policy
    entropy: torch.Tensor  # [T] float32
    truncated: torch.Tensor  # [N] bool
    prompt_index: torch.Tensor  # [N] int64 (also the group id)
    texts: list[str]
    max_new_tokens: int

    @property
    def num_rollouts(self) -> int:
        return self.offsets.numel() - 1

    def to_batch(self, reward: torch.Tensor, **per_rollout) -> RolloutBatch:
        return RolloutBatch(
            token_logprobs=self.logprobs, offsets=self.offsets, reward=reward.float(),
            group_ids=self.prompt_index, token_entropy=self.entropy, token_ids=self.response_ids,
            truncated=self.truncated, max_response_len=self.max_new_tokens, **per_rollout,
        )


def _flatten_responses(seq: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L] sampled tokens -> (mask of response tokens up to and incl. first EOS, offsets, truncated)."""
    is_eos = seq == eos_id
    after_first_eos = (torch.cumsum(is_eos.int(), 1) - is_eos.int()) > 0
    mask = ~after_first_eos
    lengths = mask.sum(1)
    offsets = torch.zeros(seq.shape[0] + 1, dtype=torch.int64, device=seq.device)
    offsets[1:] = torch.cumsum(lengths, 0)
    return mask, offsets, ~is_eos.any(1)


class HFGenerator:
    """transformers `generate` (KV cache on), sampling from the full distribution."""

    def __init__(self, model, tokenizer, config: GenerationConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config

    def sync_weights(self, model) -> None:
        """Generation reads the training model itself: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[str], group_size: int) -> GeneratedRollouts:
        if not prompts:
            raise ValueError("generate: found no prompts, expected at least one")
        if group_size < 1:
            raise ValueError(f"generate: group_size {group_size}, expected >= 1")
        tok, cfg = self.tokenizer, self.config
        device = next(self.model.parameters()).device
        ids, mask = tok.encode_batch(prompts, add_bos=True, padding_side="left")
        ids = ids.repeat_interleave(group_size, 0).to(device)
        mask = mask.repeat_interleave(group_size, 0).to(device)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=0, top_p=1.0, output_logits=True,
            return_dict_in_generate=True, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, use_cache=True,
        )
        self.model.train(was_training)
        seq = out.sequences[:, ids.shape[1]:]
        logp_all = torch.log_softmax(torch.stack(out.logits, 1).float() / cfg.temperature, -1)
        tok_logp = logp_all.gather(-1, seq.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        resp_mask, offsets, truncated = _flatten_responses(seq, tok.eos_id)
        texts = [tok.decode(r) for r in seq.tolist()]
        return GeneratedRollouts(
            response_ids=seq[resp_mask], offsets=offsets, logprobs=tok_logp[resp_mask],
            entropy=entropy[resp_mask], truncated=truncated,
            prompt_index=torch.arange(len(prompts), device=device).repeat_interleave(group_size),
            texts=texts, max_new_tokens=cfg.max_new_tokens,
        )


class VLLMGenerator:
    """vLLM `LLM.generate` with n samples per prompt and per-token log-probs.

    The engine serves the checkpoint at `model_path` (an HF folder vLLM can load) and gets the
    trainer's weights after every optimizer step through the model runner's `load_weights`
    (colocated, one process, as TRL's colocate mode does).
    """

    def __init__(self, llm, tokenizer, config: GenerationConfig):
        _require_vllm()
        self.llm, self.tokenizer, self.config = llm, tokenizer, config

    @classmethod
    def from_path(cls, model_path: str | None, tokenizer, config: GenerationConfig) -> VLLMGenerator:
        _require_vllm()
        if not model_path:
            raise ValueError("generation backend 'vllm' needs --policy.model_path (a local HF checkpoint); "
                             "the embedded char-level policy runs on the 'hf' backend")
        from vllm import LLM

        return cls(LLM(model=model_path, enable_prefix_caching=True), tokenizer, config)

    def sync_weights(self, model) -> None:
        try:
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        except AttributeError as err:
            raise ValueError("this vLLM version exposes no colocated model runner to load weights into; "
                             "use the 'hf' backend or a vLLM with llm_engine.model_executor.driver_worker") from err
        runner.model.load_weights(model.state_dict().items())

    def generate(self, prompts: list[str], group_size: int) -> GeneratedRollouts:
        from vllm import SamplingParams

        cfg = self.config
        params = SamplingParams(n=group_size, temperature=cfg.temperature, top_k=-1, top_p=1.0,
                                max_tokens=cfg.max_new_tokens, logprobs=cfg.vllm_logprobs)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        ids, lps, ents, lens, trunc, texts = [], [], [], [], [], []
        for out in outputs:
            for sample in out.outputs:
                for t, token_id in enumerate(sample.token_ids):
                    top = sample.logprobs[t]
                    ids.append(token_id)
                    lps.append(top[token_id].logprob)
                    p = torch.tensor([lp.logprob for lp in top.values()]).softmax(0)
                    ents.append(float(-(p * p.log()).sum()))
                lens.append(len(sample.token_ids))
                trunc.append(sample.finish_reason == "length")
                texts.append(sample.text)
        offsets = torch.zeros(len(lens) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor(lens), 0)
        return GeneratedRollouts(
            response_ids=torch.tensor(ids, dtype=torch.int64), offsets=offsets,
            logprobs=torch.tensor(lps, dtype=torch.float32), entropy=torch.tensor(ents, dtype=torch.float32),
            truncated=torch.tensor(trunc), prompt_index=torch.arange(len(prompts)).repeat_interleave(group_size),
            texts=texts, max_new_tokens=cfg.max_new_tokens,
        )


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "generation backend 'vllm' needs the optional extra: pip install 'rollout-bandits[vllm]'"
        ) from err


def make_generator(config: GenerationConfig, model, tokenizer, model_path: str | None = None):
    if config.backend == "vllm":
        return VLLMGenerator.from_path(model_path, tokenizer, config)
    return HFGenerator(model, tokenizer, config)


def sequence_logprobs(
    model,
    prompt_ids: list[list[int]],
    response_ids: torch.Tensor,
    offsets: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flat [T] log-probs of each rollout's response under `model` (grad flows when enabled).

    Rollout i is prompt_ids[i] followed by response_ids[offsets[i]:offsets[i+1]];
    prompts are left-padded and responses right-padded so that every response
    starts at the same column.
    """
    device = next(model.parameters()).device
    n = offsets.numel() - 1
    if len(prompt_ids) != n:
        raise ValueError(f"sequence_logprobs: {len(prompt_ids)} prompts for {n} rollouts")
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    lp_len = max(len(p) for p in prompt_ids)
    lr_len = int(lengths.max())
    ids = torch.full((n, lp_len + lr_len), pad_id, dtype=torch.int64)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, lp_len - len(p):lp_len] = torch.tensor(p, dtype=torch.int64)
        attn[i, lp_len - len(p):lp_len] = 1
    row = torch.repeat_interleave(torch.arange(n), lengths.cpu())
    col = torch.arange(int(offsets[-1])) - offsets.cpu()[row] + lp_len
    ids[row, col] = response_ids.cpu()
    attn[row, col] = 1
    ids, attn = ids.to(device), attn.to(device)
    position_ids = (torch.cumsum(attn, 1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
    logits = logits[:, lp_len - 1: lp_len + lr_len - 1].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    resp = ids[:, lp_len:]
    tok_logp = logp_all.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros(n, lr_len, dtype=torch.bool, device=device)
    mask[row.to(device), (col - lp_len).to(device)] = True
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)[mask]
    return tok_logp[mask], entropy
