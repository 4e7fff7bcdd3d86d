"""The verl adapter on real `verl.DataProto` batches, built the way verl 0.9.1's `fit` builds them.

A batch here goes through what `RayPPOTrainer.fit` does before `compute_advantage`: prompt rows
with a uid, `repeat(n, interleave=True)`, union with agent-loop-shaped rollouts (left-padded
prompts, right-padded responses, rm_scores on the last token), the real `_balance_batch`
reordering, old log-probs and entropies unioned (entropies kept by `keep_entropys`), scores and
rewards. Then verl's own `compute_advantage`, hooked.
"""

from __future__ import annotations

import copy
import re
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is not installed (pip install 'rollout-bandits[verl]')")
ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer")

from verl import DataProto  # noqa: E402
from verl.trainer.ppo.core_algos import AdvantageEstimator  # noqa: E402
from verl.trainer.ppo.metric_utils import compute_data_metrics  # noqa: E402
from verl.utils.model import compute_position_id_with_mask  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding  # noqa: E402

from rollout_bandits import Scheduler, SchedulerConfig  # noqa: E402
from rollout_bandits.integrations.verl import (  # noqa: E402
    ENTROPY_KEY,
    CBSTrainerMixin,
    DataProtoScheduler,
    fit_module,
    hook_compute_advantage,
    keep_entropys,
    schedule_dataproto,
)

PAD = 0
N_REPEAT = 4


def verl_batch(seed: int, groups: int = 4, n: int = N_REPEAT, P: int = 6, R: int = 8, rewards=None) -> DataProto:
    """One step's batch at the point `fit` calls compute_advantage."""
    g = torch.Generator().manual_seed(seed)
    prompts = DataProto.from_dict(tensors={"dummy_tensor": torch.zeros(groups, 1, dtype=torch.uint8)}, non_tensors={
        "uid": np.array([str(uuid.UUID(int=seed * 1000 + i)) for i in range(groups)], dtype=object),
        "data_source": np.array([f"src{seed}-{i}" for i in range(groups)], dtype=object),
        "reward_model": np.array([{"ground_truth": str(i)} for i in range(groups)], dtype=object),
    })
    plen = torch.randint(2, P + 1, (groups,), generator=g).repeat_interleave(n)
    ptok = torch.randint(3, 50, (groups, P), generator=g).repeat_interleave(n, 0)
    rlen = torch.randint(1, R + 1, (groups * n,), generator=g)
    rlen[0] = R  # one truncated response
    b = groups * n
    prompt_mask = torch.arange(P) >= (P - plen[:, None])
    resp_mask = torch.arange(R) < rlen[:, None]
    prompt_ids = torch.where(prompt_mask, ptok, PAD)
    response_ids = torch.where(resp_mask, torch.randint(3, 50, (b, R), generator=g), PAD)
    attention = torch.cat([prompt_mask, resp_mask], 1).long()
    score = torch.randint(0, 2, (b,), generator=g).float() if rewards is None else torch.as_tensor(rewards).float()
    rm_scores = torch.zeros(b, R)
    rm_scores[torch.arange(b), attention[:, P:].sum(1) - 1] = score
    rollouts = DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "response_mask": resp_mask.long(),
                 "input_ids": torch.cat([prompt_ids, response_ids], 1), "attention_mask": attention,
                 "position_ids": compute_position_id_with_mask(attention), "rm_scores": rm_scores},
        non_tensors={"__num_turns__": np.full(b, 2, dtype=np.int32), "acc": score.numpy().astype(bool),
                     "row_id": np.array([f"{seed}:{i}" for i in range(b)], dtype=object)},
        meta_info={"reward_extra_keys": ["acc"]},
    )
    batch = prompts.repeat(repeat_times=n, interleave=True).union(rollouts)
    stub = types.SimpleNamespace(_get_dp_size=lambda wg, role: 2, actor_rollout_wg=None, use_prefix_grouper=False)
    ray_trainer.RayPPOTrainer._balance_batch(stub, batch, metrics={})  # reorders rows, as fit does
    batch.meta_info["global_token_num"] = batch.batch["attention_mask"].sum(-1).tolist()
    m = batch.batch["response_mask"].float()
    old = DataProto.from_dict(tensors={"old_log_probs": -torch.rand(b, R, generator=g) * m,
                                       "entropys": torch.rand(b, R, generator=g) * m})
    old = keep_entropys(old)
    old.batch.pop("entropys")  # fit pops it before the union
    batch = batch.union(old)
    batch.batch["token_level_scores"] = batch.batch["rm_scores"]
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    return batch


def grpo(batch: DataProto) -> DataProto:
    return ray_trainer.compute_advantage(batch, adv_estimator=AdvantageEstimator.GRPO, num_repeat=N_REPEAT,
                                         norm_adv_by_std_in_grpo=True)


def scheduled(sched, batch: DataProto, **kw) -> DataProto:
    with hook_compute_advantage(ray_trainer, sched, **kw):
        return grpo(batch)


def rows_by_id(batch: DataProto) -> dict:
    """row_id -> the row's unpadded fields."""
    td, out = batch.batch, {}
    P = td["prompts"].shape[1]
    for i, rid in enumerate(batch.non_tensor_batch["row_id"]):
        pm, rm = td["attention_mask"][i, :P].bool(), td["response_mask"][i].bool()
        out[rid] = {
            "prompt": td["prompts"][i][pm].tolist(), "response": td["responses"][i][rm].tolist(),
            "old_log_probs": td["old_log_probs"][i][rm], "score": float(td["token_level_scores"][i].sum()),
            "score_at_last": bool(td["token_level_scores"][i][rm.sum() - 1] == td["token_level_scores"][i].sum()),
            "advantage": td["advantages"][i][rm], "non_tensor": {k: v[i] for k, v in batch.non_tensor_batch.items()},
        }
    return out


def assert_consistent(out: DataProto) -> None:
    """Every field at one width and consistent with the others, and verl's own readers accept it."""
    td = out.batch
    P, R = td["prompts"].shape[1], td["responses"].shape[1]
    assert torch.equal(td["input_ids"], torch.cat([td["prompts"], td["responses"]], 1))
    assert torch.equal(td["attention_mask"][:, P:], td["response_mask"])
    assert torch.equal(td["position_ids"], compute_position_id_with_mask(td["attention_mask"]))
    for k in ("old_log_probs", "token_level_scores", "token_level_rewards", "rm_scores", "advantages", "returns"):
        assert td[k].shape == (len(out), R), k
    assert ENTROPY_KEY not in td.keys()
    uids = list(out.non_tensor_batch["uid"])
    for u in set(uids):  # each uid's rows together
        at = [i for i, v in enumerate(uids) if v == u]
        assert at == list(range(at[0], at[0] + len(at)))
    assert out.meta_info["global_token_num"] == td["attention_mask"].sum(-1).tolist()
    if len(out):
        left_right_2_no_padding(out.to_tensordict())
        compute_data_metrics(out, use_critic=False)


def test_selected_rows_kept_with_full_group_advantages():
    sched = DataProtoScheduler(Scheduler(SchedulerConfig(gain="batch"), seed=0))
    batch = verl_batch(1)
    full = rows_by_id(grpo(copy.deepcopy(batch)))
    out = scheduled(sched, batch)
    step = sched.last_step
    assert len(out) == step.num_fresh_selected == batch.batch.batch_size[0] // 2 and step.num_reused == 0
    assert_consistent(out)
    got = rows_by_id(out)
    for rid, row in got.items():
        want = full[rid]
        assert row["prompt"] == want["prompt"] and row["response"] == want["response"]
        torch.testing.assert_close(row["old_log_probs"], want["old_log_probs"])
        torch.testing.assert_close(row["advantage"], want["advantage"])  # against all n rollouts
        assert row["non_tensor"].keys() == want["non_tensor"].keys()
    # Every group keeps its top half.
    uids = list(out.non_tensor_batch["uid"])
    assert {u: uids.count(u) for u in uids} == {u: N_REPEAT // 2 for u in set(batch.non_tensor_batch["uid"])}


def test_reused_rows_rebuilt_from_the_store_and_repadded():
    sched = DataProtoScheduler(Scheduler(SchedulerConfig(gain="batch"), seed=0))
    first = verl_batch(1, P=6, R=8)
    full_first = rows_by_id(grpo(copy.deepcopy(first)))
    scheduled(sched, first)
    second = verl_batch(2, P=4, R=5)  # narrower: stored rollouts are longer, everything is re-padded
    full_second = rows_by_id(grpo(copy.deepcopy(second)))
    out = scheduled(sched, second)
    step = sched.last_step
    assert step.num_reused > 0 and len(out) == step.num_fresh_selected + step.num_reused
    assert out.batch["prompts"].shape[1] >= 4 and out.batch["responses"].shape[1] >= 5
    assert_consistent(out)
    got = rows_by_id(out)
    ids = list(out.non_tensor_batch["row_id"])
    fresh, reused = ids[:step.num_fresh_selected], ids[step.num_fresh_selected:]
    assert all(r.startswith("2:") for r in fresh) and all(r.startswith("1:") for r in reused)
    for rid in ids:
        want = (full_first if rid in reused else full_second)[rid]
        row = got[rid]
        assert row["prompt"] == want["prompt"] and row["response"] == want["response"]
        torch.testing.assert_close(row["old_log_probs"], want["old_log_probs"])
        torch.testing.assert_close(row["advantage"], want["advantage"])
        assert row["score"] == want["score"] and row["score_at_last"]
        for k, v in want["non_tensor"].items():
            assert row["non_tensor"][k] == v, k
    assert out.non_tensor_batch["__num_turns__"].dtype == np.int32
    # Reused rows of one original group stay together (uid groups intact across rounds).
    reused_uids = list(out.non_tensor_batch["uid"][step.num_fresh_selected:])
    assert reused_uids == sorted(reused_uids, key=reused_uids.index)


def test_empty_selection_is_an_empty_batch_with_every_field():
    sched = Scheduler(SchedulerConfig(policy="dapo_filter"))  # a bare Scheduler works too
    batch = verl_batch(3, rewards=[1.0] * 16)  # every group zero-variance: dapo_filter keeps nothing
    out = scheduled(sched, batch, multiple_of=8)
    assert len(out) == 0
    assert set(out.batch.keys()) == set(batch.batch.keys()) - {ENTROPY_KEY} | {"advantages", "returns"}
    assert set(out.non_tensor_batch) == set(batch.non_tensor_batch)
    assert out.batch["responses"].shape == (0, 8)
    assert_consistent(out)


def test_multiple_of_leaves_out_the_lowest_scored_rows():
    sched = DataProtoScheduler(Scheduler(SchedulerConfig(gain="batch", intra_ratio=0.75), seed=0))
    state = copy.deepcopy(sched.state_dict())
    all_rows = scheduled(sched, verl_batch(4))
    scores = sched.last_step.fresh.scores[sched.last_step.fresh.indices]
    sched.load_state_dict(state)
    out = scheduled(sched, verl_batch(4), multiple_of=5)  # 12 selected -> 10
    assert len(all_rows) == 12 and len(out) == 10
    top = torch.sort(torch.sort(scores, descending=True, stable=True).indices[:10]).values
    assert list(out.non_tensor_batch["row_id"]) == [all_rows.non_tensor_batch["row_id"][i] for i in top.tolist()]
    assert_consistent(out)
    with pytest.raises(ValueError, match="schedule_dataproto.multiple_of: found 64 with only"):
        scheduled(sched, verl_batch(5), multiple_of=64)


def test_fields_it_cannot_rebuild_come_from_fill():
    def fill(reused: DataProto) -> DataProto:
        return DataProto.from_dict(tensors={"ref_log_prob": reused.batch["old_log_probs"] - 0.5})

    sched = DataProtoScheduler(Scheduler(SchedulerConfig(gain="batch"), seed=0))
    first, second = verl_batch(1), verl_batch(2)
    for b in (first, second):
        b.batch["ref_log_prob"] = b.batch["old_log_probs"] - 0.5
    scheduled(sched, first, fill=fill)
    with pytest.raises(ValueError, match=r"fields \['ref_log_prob'\] the reused rows cannot be rebuilt"):
        scheduled(sched, copy.deepcopy(second))
    assert sched.scheduler.round == 1  # refused before selecting
    out = scheduled(sched, second, fill=fill)
    assert sched.last_step.num_reused > 0
    torch.testing.assert_close(out.batch["ref_log_prob"], out.batch["old_log_probs"] - 0.5)
    assert_consistent(out)


def test_bad_batches_are_named():
    sched = DataProtoScheduler()
    batch = verl_batch(1)
    del batch.non_tensor_batch["uid"]
    with pytest.raises(ValueError, match=r"schedule_dataproto.data.non_tensor_batch: found no 'uid'"):
        schedule_dataproto(sched, batch)
    batch = grpo(verl_batch(1))
    batch.batch["advantages"] = batch.batch["advantages"] + torch.arange(8.0)
    with pytest.raises(ValueError, match="advantages that vary along a response"):
        schedule_dataproto(sched, batch)
    batch = verl_batch(1)
    batch.batch["response_mask"][0, 0] = 0
    with pytest.raises(ValueError, match="a response mask with holes"):
        schedule_dataproto(sched, batch)
    with pytest.raises(ValueError, match="schedule_dataproto.data: found"):
        schedule_dataproto(sched, {"prompts": torch.zeros(1)})
    assert sched.scheduler.round == 0  # nothing was selected by the failed calls


# ------------------------------------------------------------------ the recipe
compute_advantage = ray_trainer.compute_advantage  # what FakeFit.fit calls, as fit does, by module global


class FakeFit:
    """Stands in for RayPPOTrainer: calls this module's compute_advantage, as verl's fit calls its own."""

    def __init__(self, batches):
        self.batches, self.trained = batches, []
        self.config = types.SimpleNamespace(actor_rollout_ref=types.SimpleNamespace(
            actor=types.SimpleNamespace(ppo_mini_batch_size=2), rollout=types.SimpleNamespace(n=N_REPEAT)))

    def _compute_old_log_prob(self, batch):
        return DataProto.from_dict(tensors={"old_log_probs": torch.zeros(2, 3), "entropys": torch.ones(2, 3)}), 0.5

    def fit(self):
        for batch in self.batches:
            self.trained.append(compute_advantage(batch, adv_estimator=AdvantageEstimator.GRPO,
                                                  num_repeat=N_REPEAT, norm_adv_by_std_in_grpo=True))


class CBSFake(CBSTrainerMixin, FakeFit):
    pass


def test_mixin_schedules_inside_fit_and_restores_compute_advantage():
    trainer = CBSFake([verl_batch(1), verl_batch(2)])
    trainer.fit()
    assert compute_advantage is ray_trainer.compute_advantage  # restored
    assert fit_module(CBSFake) is sys.modules[__name__]
    first, second = trainer.trained
    assert len(first) == 8 and len(second) == 8  # 8 fresh; 8 fresh + 4 reused -> a multiple of 2 * 4
    assert trainer.rollout_scheduler.scheduler.round == 2
    assert_consistent(second)
    old, mfu = trainer._compute_old_log_prob(None)
    assert mfu == 0.5 and torch.equal(old.batch[ENTROPY_KEY], torch.ones(2, 3))


def test_mixin_refuses_per_arm_gains():
    class Wrong(CBSFake):
        scheduler_config = SchedulerConfig(gain="heldout")

    with pytest.raises(ValueError, match="Wrong.scheduler_config: found gain='heldout'"):
        _ = Wrong([]).rollout_scheduler


def test_readme_verl_snippet_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Use it in verl", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert code, "README's 'Use it in verl' section has no python block"
    ns: dict = {}
    exec(compile(code[0], "README.md", "exec"), ns)
    trainer_cls = ns["CBSRayPPOTrainer"]
    assert issubclass(trainer_cls, ray_trainer.RayPPOTrainer) and issubclass(trainer_cls, CBSTrainerMixin)
    assert fit_module(trainer_cls) is ray_trainer
    trainer = object.__new__(trainer_cls)  # the hook alone: no Ray workers here
    with hook_compute_advantage(fit_module(trainer_cls), trainer.rollout_scheduler, multiple_of=1):
        out = grpo(verl_batch(1))
    assert len(out) == 8
    assert_consistent(out)
