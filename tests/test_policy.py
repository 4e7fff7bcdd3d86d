"""Char tokenizer, tiny policy build/load, generation, and a seconds-long SFT warm-up."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_bandits.trainer.policy import (
    PolicyConfig,
    build_policy,
    evaluate_pass_rate,
    generate,
    num_params,
    save_policy,
    sft_warmup,
    torch_threads,
)
from rollout_bandits.trainer.tasks import FAMILIES, make_task
from rollout_bandits.trainer.tokenizer import DEFAULT_CHARS, CharTokenizer

TINY = PolicyConfig(n_layers=1, hidden=32, n_heads=2, max_length=32)


# ----------------------------------------------------------------- tokenizer
@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=DEFAULT_CHARS, max_size=50))
def test_tokenizer_round_trip(text):
    tok = CharTokenizer()
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == len(text) + 2
    assert tok.decode(ids) == text


def test_tokenizer_covers_every_task_prompt_and_answer():
    tok = CharTokenizer()
    for name in FAMILIES:
        for d in (1, 3):
            for p in make_task(name, difficulty=d).sample(30, seed=0):
                assert tok.decode(tok.encode(p.prompt + p.answer)) == p.prompt + p.answer


def test_tokenizer_specials_and_errors():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 4 + len(DEFAULT_CHARS) == len(tok)
    ids = tok.encode("12+3=") + [tok.eos_id] + tok.encode("junk")
    assert tok.decode(ids) == "12+3="  # stops at EOS
    assert tok.decode(ids, stop_at_eos=False) == "12+3=junk"
    assert tok.decode([tok.bos_id] + tok.encode("a"), skip_special=False) == "<bos>a"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("π")
    assert CharTokenizer(unknown="unk").encode("aπ")[1] == tok.unk_id
    with pytest.raises(ValueError):
        tok.decode([10_000])
    with pytest.raises(ValueError):
        CharTokenizer(chars="aab")


def test_tokenizer_batch_helpers():
    tok = CharTokenizer()
    ids, mask = tok.encode_batch(["1+1=", "12+34="], padding_side="left")
    assert ids.shape == (2, 7) and mask.tolist()[0] == [0, 0, 1, 1, 1, 1, 1]
    assert ids[0, 2].item() == tok.bos_id and ids[0, 0].item() == tok.pad_id
    assert tok.decode_batch(ids) == ["1+1=", "12+34="]
    rids, rmask = tok.encode_batch(["1+1=", "12+34="], padding_side="right", add_eos=True)
    assert rmask.tolist()[0] == [1] * 6 + [0, 0] and rids[0, 5].item() == tok.eos_id
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(["123456"], max_length=4)
    with pytest.raises(ValueError):
        tok.encode_batch("abc")
    with pytest.raises(ValueError):
        tok.encode_batch(["a"], padding_side="middle")


def test_tokenizer_save_load(tmp_path):
    tok = CharTokenizer()
    path = tmp_path / "tok.json"
    tok.save(path)
    back = CharTokenizer.load(path)
    assert back.chars == tok.chars and back.encode("s3142=") == tok.encode("s3142=")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        CharTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        CharTokenizer.load(tmp_path / "none.json")


# -------------------------------------------------------------------- policy
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_build_from_config(arch):
    model, tok = build_policy(PolicyConfig(arch=arch, n_layers=1, hidden=32, n_heads=2))
    ids, mask = tok.encode_batch(["12+7=", "s31="])
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, ids.shape[1], tok.vocab_size)
    assert torch.isfinite(logits).all()


def test_default_policy_size_and_seeding():
    rng_before = torch.random.get_rng_state()
    m1, _ = build_policy(PolicyConfig())
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert 100_000 <= num_params(m1) <= 1_000_000
    m2, _ = build_policy(PolicyConfig())
    m3, _ = build_policy(PolicyConfig(seed=1))
    p1, p2, p3 = (torch.cat([p.flatten() for p in m.parameters()]) for m in (m1, m2, m3))
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_policy(PolicyConfig(model_path=str(tmp_path / "no-such-checkpoint")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load"):
        build_policy(PolicyConfig(model_path=str(tmp_path / "empty")))


def test_save_and_load_local_checkpoint(tmp_path):
    model, tok = build_policy(TINY)
    save_policy(model, tok, tmp_path / "ckpt")
    back, tok2 = build_policy(PolicyConfig(model_path=str(tmp_path / "ckpt")))
    assert isinstance(tok2, CharTokenizer) and tok2.chars == tok.chars
    ids, mask = tok.encode_batch(["47+85="])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, back(input_ids=ids).logits)


@pytest.mark.parametrize(
    "kwargs",
    [dict(arch="mamba"), dict(n_layers=0), dict(hidden=30, n_heads=4), dict(dtype="int8"),
     dict(intermediate=-1)],
)
def test_config_errors(kwargs):
    with pytest.raises(ValueError):
        PolicyConfig(**kwargs)


def test_generate_greedy_and_seeded_sampling():
    model, tok = build_policy(TINY)
    prompts = ["12+7=", "s3142=", "p101="]
    g1 = generate(model, tok, prompts, max_new_tokens=5)
    assert g1 == generate(model, tok, prompts, max_new_tokens=5) and len(g1) == 3
    assert all(len(c) <= 5 for c in g1)
    s1 = generate(model, tok, prompts, 5, greedy=False, seed=3)
    assert s1 == generate(model, tok, prompts, 5, greedy=False, seed=3)
    with pytest.raises(ValueError):
        generate(model, tok, prompts, max_new_tokens=0)


def test_short_warmup_raises_pass_rate():
    task = make_task("mod")
    model, tok = build_policy(PolicyConfig())
    before = evaluate_pass_rate(model, tok, task, n=100)
    stats = sft_warmup(model, tok, [task], steps=50, batch_size=64)
    after = evaluate_pass_rate(model, tok, task, n=100)
    assert stats["losses"][-1] < stats["losses"][0]
    assert after >= before + 0.05, (before, after)
    with pytest.raises(ValueError, match="weights"):
        sft_warmup(model, tok, [task], steps=1, weights=[0.0])
    with pytest.raises(ValueError, match="tasks"):
        sft_warmup(model, tok, [], steps=1)


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with torch_threads(0):
            pass
