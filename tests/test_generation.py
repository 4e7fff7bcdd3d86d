"""Generation: behaviour log-probs agree with the training forward; EOS and truncation handling."""

import pytest
import torch

from rollout_bandits.trainer.generation import (
    GenerationConfig,
    HFGenerator,
    VLLMGenerator,
    _flatten_responses,
    sequence_logprobs,
)
from rollout_bandits.trainer.policy import PolicyConfig, build_policy


def test_flatten_stops_after_first_eos():
    eos = 2
    seq = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 5, 2, 0]])
    mask, offsets, truncated = _flatten_responses(seq, eos)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert offsets.tolist() == [0, 2, 6, 7]
    assert truncated.tolist() == [False, True, False]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return build_policy(PolicyConfig(hidden=32, n_layers=1, n_heads=2))


@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=["t1", "t0.7"])
def test_behaviour_logprobs_match_training_forward(policy, temperature):
    model, tok = policy
    prompts = ["12+7=", "3*45=", "9="]
    gen = HFGenerator(model, tok, GenerationConfig(max_new_tokens=6, temperature=temperature))
    torch.manual_seed(1)
    r = gen.generate(prompts, 3)
    assert r.num_rollouts == 9 and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    pids = [tok.encode(p, add_bos=True) for p in prompts for _ in range(3)]
    with torch.no_grad():
        lp, ent = sequence_logprobs(model, pids, r.response_ids, r.offsets, tok.pad_id,
                                    temperature=temperature, with_entropy=True)
    torch.testing.assert_close(lp, r.logprobs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ent, r.entropy, rtol=1e-4, atol=1e-4)
    batch = r.to_batch(torch.ones(9))
    batch.validate()
    assert batch.num_groups == 3 and batch.max_response_len == 6
    lengths = batch.lengths
    # untruncated rollouts end with EOS; truncated ones used the whole budget
    for i in range(9):
        last = r.response_ids[int(r.offsets[i + 1]) - 1]
        assert (last == tok.eos_id) != bool(r.truncated[i])
        if r.truncated[i]:
            assert lengths[i] == 6


def test_sampling_is_reproducible_under_the_torch_seed(policy):
    model, tok = policy
    gen = HFGenerator(model, tok, GenerationConfig(max_new_tokens=5))
    torch.manual_seed(3)
    a = gen.generate(["1+1="], 4)
    torch.manual_seed(3)
    b = gen.generate(["1+1="], 4)
    assert torch.equal(a.response_ids, b.response_ids)


def test_bad_generation_inputs(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="backend"):
        GenerationConfig(backend="sglang")
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    gen = HFGenerator(model, tok, GenerationConfig())
    with pytest.raises(ValueError, match="no prompts"):
        gen.generate([], 2)


def test_vllm_absent_gives_a_clear_message():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"rollout-bandits\[vllm\]"):
            VLLMGenerator(None, None, GenerationConfig(backend="vllm"))
    else:
        pytest.skip("vLLM is installed here")
