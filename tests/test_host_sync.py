"""With validate=False the Triton path launches without reading device data on the host, so the
whole `schedule` call can be captured in a CUDA graph (issue 12).

Here (no GPU) the launchers run under a trap: every way of bringing a tensor's values to the host
(`.item()`, `int(t)`, `.cpu()`, `.tolist()`, `nonzero`, a bool-mask index, a `repeat_interleave`
without `output_size`, ...) raises while the launch path runs, except inside the kernel launches
themselves (the interpreter reads its arguments on the host; a GPU does not). An AST check of the
launch functions backs it up. With CUDA, sync debug mode "error" and a CUDA graph capture do the
same on the device.
"""

import ast
import importlib
import inspect
import textwrap

import pytest
import torch

from rollout_bandits import RolloutBatch, ScorerWeights, schedule
from rollout_bandits.kernels import NUM_FEATURES, rollout_features, ucb_score
from rollout_bandits.kernels.group_topk import group_topk, group_topk_mask
from rollout_bandits.synthetic import synthetic_batch

rf = importlib.import_module("rollout_bandits.kernels.rollout_features")
us = importlib.import_module("rollout_bandits.kernels.ucb_score")
tk = importlib.import_module("rollout_bandits.kernels.group_topk")
sc = importlib.import_module("rollout_bandits.kernels.schedule")
launch = importlib.import_module("rollout_bandits.kernels.launch")

KERNELS = [(rf, "_rollout_features_kernel"), (us, "_ucb_score_kernel"), (tk, "_group_topk_kernel"),
           (tk, "_global_topm_kernel")]


class HostRead(AssertionError):
    pass


class _Trap:
    """Arms the patched tensor methods; counts the kernel launches."""

    def __init__(self):
        self.armed = False
        self.launches = []

    def guard(self, name, fn, allowed=lambda *a, **k: False):
        def wrapped(*args, **kwargs):
            if self.armed and not allowed(*args, **kwargs):
                raise HostRead(f"{name} on the launch path reads device data on the host")
            return fn(*args, **kwargs)
        return wrapped

    def kernel(self, name, jit_fn):
        trap = self

        class Launcher:
            def __getitem__(self, grid):
                run = jit_fn[grid]

                def launch(*args, **kwargs):
                    trap.launches.append(name)
                    armed, trap.armed = trap.armed, False
                    try:
                        return run(*args, **kwargs)
                    finally:
                        trap.armed = armed
                return launch
        return Launcher()


@pytest.fixture
def trap(monkeypatch):
    t = _Trap()
    for name in ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__", "nonzero",
                 "unique", "masked_select", "any", "all"):
        monkeypatch.setattr(torch.Tensor, name, t.guard(f"Tensor.{name}", getattr(torch.Tensor, name)))
    for name in ("nonzero", "unique", "masked_select", "argwhere"):
        monkeypatch.setattr(torch, name, t.guard(f"torch.{name}", getattr(torch, name)))
    monkeypatch.setattr(torch, "repeat_interleave", t.guard(
        "torch.repeat_interleave without output_size", torch.repeat_interleave,
        allowed=lambda *a, **k: k.get("output_size") is not None or not isinstance(a[1] if len(a) > 1 else
                                                                                     k.get("repeats"), torch.Tensor)))
    getitem = torch.Tensor.__getitem__
    monkeypatch.setattr(torch.Tensor, "__getitem__", t.guard(
        "a bool-mask index", getitem,
        allowed=lambda self, idx: not (isinstance(idx, torch.Tensor) and idx.dtype == torch.bool)))
    for mod, name in KERNELS:
        monkeypatch.setattr(mod, name, t.kernel(name, getattr(mod, name)))
    return t


def _batch(max_len: bool, seed: int = 0) -> RolloutBatch:
    b = synthetic_batch(6, (1, 7), 20, seed=seed)
    if not max_len:
        b.max_response_len = None
    return b


@pytest.mark.parametrize("max_len", [True, False], ids=["max_response_len", "longest-on-device"])
@pytest.mark.parametrize("diag", [False, True], ids=["dense", "diag"])
def test_schedule_reads_nothing_back_on_the_launch_path(trap, max_len, diag):
    b = _batch(max_len)
    w = ScorerWeights.random(NUM_FEATURES, 24, diagonal=diag, seed=1)
    trap.armed = True
    got = schedule(b, w, k=2, backend="triton", validate=False)
    trap.armed = False
    assert trap.launches == ["_rollout_features_kernel", "_ucb_score_kernel", "_group_topk_kernel"]
    want = schedule(b, w, k=2, backend="triton")
    assert torch.equal(got.mask, want.mask) and torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.contexts, want.contexts, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)


def test_each_launcher_reads_nothing_back(trap):
    b = _batch(True, seed=3)
    w = ScorerWeights.random(NUM_FEATURES, 16, seed=2)
    trap.armed = True
    x = rollout_features(b, backend="triton", validate=False)
    score, _, _ = ucb_score(x, w, backend="triton", validate=False)
    mask = group_topk_mask(score, b.group_offsets, ratio=0.5, rewards=b.reward, validate=False)
    trap.armed = False
    assert torch.equal(mask, group_topk(score, b.group_offsets, ratio=0.5, rewards=b.reward, backend="reference")[1])


def test_the_trap_catches_a_host_read(trap):
    t = torch.ones(3)
    trap.armed = True
    for read in (lambda: int(t[0]), lambda: t.max().item(), lambda: t.tolist(), lambda: torch.nonzero(t),
                 lambda: t[t > 0], lambda: torch.repeat_interleave(t, torch.tensor([1, 1, 1]))):
        with pytest.raises(HostRead):
            read()
    trap.armed = False


# Launch-path functions and what must not appear in them outside `if validate:` / `if check_values:`.
LAUNCH_PATH = [rf.rollout_features_triton, rf._features_args, rf.features_plan, us.ucb_score_triton, us._ucb_args,
               us.ucb_plan, tk.group_topk_mask, tk._prepare, tk._check_groups, tk._group_topk_launch, tk._topk_args,
               tk.topk_plan, tk.mask_of, sc.schedule, launch.new_output]
READS = {"item", "tolist", "cpu", "numpy", "nonzero", "unique", "masked_select"}
REDUCTIONS = {"max", "min", "sum", "any", "all", "amax", "amin", "prod", "mean"}


def _host_reads(fn) -> list[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    found = []

    def guarded(test) -> bool:  # `if validate:` or `if validate and ...:`
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            test = test.values[0]
        return isinstance(test, ast.Name) and test.id in ("validate", "check_values")

    def visit(node):
        if isinstance(node, ast.If) and guarded(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in READS:
                found.append(f".{f.attr}()")
            if isinstance(f, ast.Name) and f.id in ("int", "float", "bool") and any(
                    isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr in REDUCTIONS
                    for a in node.args for c in ast.walk(a)):
                found.append(f"{f.id}(<tensor reduction>)")
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    return found


@pytest.mark.parametrize("fn", LAUNCH_PATH, ids=lambda f: f.__name__)
def test_launch_functions_hold_no_host_read(fn):
    assert _host_reads(fn) == []


def test_the_ast_check_finds_host_reads():
    def bad(batch, validate):
        if validate:
            batch.offsets.tolist()  # allowed: the validating path
        return int(batch.lengths.max()), batch.reward.cpu()
    assert _host_reads(bad) == ["int(<tensor reduction>)", ".cpu()"]


# ------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_schedule_has_no_sync_and_captures_in_a_graph():
    b = synthetic_batch(256, 8, 300, seed=4, device="cuda")
    w = ScorerWeights.random(NUM_FEATURES, 64, seed=5, device="cuda")
    want = schedule(b, w, k=4, validate=False)  # compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = schedule(b, w, k=4, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.mask, want.mask)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        schedule(b, w, k=4, validate=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = schedule(b, w, k=4, validate=False)
    b.token_logprobs.copy_(b.token_logprobs * 0.5)  # new data in the same buffers
    graph.replay()
    fresh = schedule(b, w, k=4, validate=False)
    torch.cuda.synchronize()
    assert torch.equal(captured.mask, fresh.mask)
    torch.testing.assert_close(captured.scores, fresh.scores, rtol=0, atol=0)
