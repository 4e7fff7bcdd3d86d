"""ucb_score: fused neural-UCB scoring of N bandit contexts in one launch.

score = f(x) + gamma * sqrt(phi(x)^T Zinv phi(x)), where f is a small MLP
D -> H -> H -> 1 and phi the output of its last hidden layer (after the
activation). The diagonal variant uses bonus = gamma * sqrt(sum_h phi_h^2 *
zinv_diag_h) (a diagonal approximation of the inverse design matrix).
NeuralUCB with last-layer features is this project's reconstruction [ours]
(docs/method.md, section 5); feature standardization is folded into w1/b1 by the learner, so
the kernel sees raw contexts.

Layout as in kernels/rollout_features.py: `@triton.jit` kernel, launcher,
vectorized PyTorch reference, dispatcher; the plain float64 oracle that the
tests hold both to is `ucb_score_naive` in kernels/naive.py.

Kernel: one program per tile of BLOCK_N rows. Layer 1 is computed in column
chunks of BLOCK_K and fed straight into layer 2 as its K-chunks; for the dense
bonus, phi @ Zinv is taken in K-chunks of phi, which the program reads back
from its own rows of a scratch buffer (a register tile has no column slices).
So every `tl.dot` has K <= 16 on CUDA and no operand holds all of H in
registers: with BLOCK_N * BLOCK_H <= 4096 no configuration spills on sm_90 or
sm_80 for H up to 256 (kernels/aot.py checks it). Accuracy: every product is a
`tl.dot` in IEEE fp32 (`input_precision="ieee"`, the FMA units), not TF32 or
bf16: the bonus is a quadratic form whose terms cancel, the tests hold kernel
and reference to float32's forward error bound against the float64 oracle
(tests/_oracle_tol.py) and to 1e-5 of each other, which a TF32 dot (10-bit
mantissa, relative error ~5e-4 per product) would not meet, and the scorer's
FLOPs are small next to the feature pass. D = 15 and H need not be powers of
two: blocks are padded to powers of two >= 16 and every load is masked, with
zeros in the padding (padding columns stay exactly 0 through both layers,
since act(0) = 0 for ReLU and GELU). The activation is a runtime flag (one
compiled kernel serves ReLU and GELU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rollout_bandits.kernels._triton import tl, triton
from rollout_bandits.kernels.launch import LaunchConfig, launch_config, new_output
from rollout_bandits.validation import check_choice, check_float, check_tensor, fail, shape_str, use_triton

ACTIVATIONS = ("relu", "gelu")


@dataclass
class ScorerWeights:
    """The scorer's parameters and exploration state, as the kernels consume them.

    `w1` [D, H], `b1` [H], `w2` [H, H], `b2` [H], `w3` [H], `b3` 0-d: the MLP
    (row-vector convention, h = act(x @ w1 + b1)). Exactly one of `zinv`
    [H, H] (the inverse design matrix over phi, symmetric) and `zinv_diag` [H]
    (the diagonal variant) is given. `gamma` >= 0 scales the bonus.
    `activation`: "relu" or "gelu" (exact erf GELU, in kernel and reference).
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    zinv: torch.Tensor | None = None
    zinv_diag: torch.Tensor | None = None
    gamma: float = 1.0
    activation: str = "relu"

    @property
    def num_features(self) -> int:
        return int(self.w1.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.w1.shape[1])

    @property
    def diagonal(self) -> bool:
        return self.zinv is None

    @property
    def device(self) -> torch.device:
        return self.w1.device

    def validate(self, num_features: int | None = None) -> ScorerWeights:
        """Raise ValueError naming the field, what was found and what was expected."""
        o = "ScorerWeights"
        for name in ("w1", "b1", "w2", "b2", "w3", "b3", "zinv", "zinv_diag"):
            check_tensor(o, name, getattr(self, name), kind="float", allow_none=name.startswith("zinv"))
        if self.w1.dim() != 2 or self.w1.shape[0] < 1 or self.w1.shape[1] < 1:
            fail(o, "w1", f"shape {shape_str(self.w1)}", "a 2-D tensor [D, H] with D, H >= 1")
        d, h = self.w1.shape
        if num_features is not None and d != num_features:
            fail(o, "w1", f"shape {shape_str(self.w1)}", f"[{num_features}, H] (D = the context width {num_features})")
        for name, shp in {"b1": (h,), "w2": (h, h), "b2": (h,), "w3": (h,), "b3": ()}.items():
            want = "a 0-d tensor" if not shp else "[" + ", ".join(map(str, shp)) + "]"
            check_tensor(o, name, getattr(self, name), shape=shp, expected=f"{want} (H = {h} from w1)")
        if (self.zinv is None) == (self.zinv_diag is None):
            fail(o, "zinv", "both zinv and zinv_diag" if self.zinv is not None else "neither zinv nor zinv_diag",
                 "exactly one of them")
        if self.zinv is not None:
            z = self.zinv
            if z.dim() != 2 or z.shape[0] != z.shape[1]:
                fail(o, "zinv", f"shape {shape_str(z)}", f"a square matrix [{h}, {h}]")
            check_tensor(o, "zinv", z, shape=(h, h), expected=f"[{h}, {h}] (H = {h} from w1)")
        check_tensor(o, "zinv_diag", self.zinv_diag, shape=(h,), expected=f"[{h}] (H = {h} from w1)",
                     allow_none=True)
        for name in ("b1", "w2", "b2", "w3", "b3", "zinv", "zinv_diag"):
            v = getattr(self, name)
            if v is not None and v.device != self.w1.device:
                fail(o, name, f"device {v.device}", f"device {self.w1.device} (the device of w1)")
        g = float(self.gamma) if isinstance(self.gamma, torch.Tensor) else self.gamma
        check_float(o, "gamma", g)
        check_choice(o, "activation", self.activation, ACTIVATIONS)
        return self

    def to(self, device: torch.device | str) -> ScorerWeights:
        kw = {}
        for name in ("w1", "b1", "w2", "b2", "w3", "b3", "zinv", "zinv_diag"):
            v = getattr(self, name)
            kw[name] = None if v is None else v.to(device)
        return ScorerWeights(**kw, gamma=self.gamma, activation=self.activation)

    @classmethod
    def random(cls, num_features: int, hidden: int, *, diagonal: bool = False, gamma: float = 1.0,
               activation: str = "relu", seed: int = 0, device: str | torch.device = "cpu") -> ScorerWeights:
        """Seeded random weights (He-scaled) and a random SPD Zinv, for tests and benchmarks."""
        g = torch.Generator().manual_seed(seed)
        d, h = num_features, hidden

        def rn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * scale

        if diagonal:
            zinv, zdiag = None, torch.rand(h, generator=g) + 0.05
        else:
            a = rn(h, h, scale=1.0 / math.sqrt(h))
            zinv, zdiag = a @ a.T / h + 0.05 * torch.eye(h), None
        w = cls(
            w1=rn(d, h, scale=math.sqrt(2.0 / d)), b1=rn(h, scale=0.1),
            w2=rn(h, h, scale=math.sqrt(2.0 / h)), b2=rn(h, scale=0.1),
            w3=rn(h, scale=1.0 / math.sqrt(h)), b3=torch.randn((), generator=g) * 0.1,
            zinv=zinv, zinv_diag=zdiag, gamma=gamma, activation=activation,
        )
        return w.to(device)


# --------------------------------------------------------------------- kernel
@triton.jit
def _act(x, gelu):
    y = tl.maximum(x, 0.0)
    if gelu:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return y


@triton.jit(do_not_specialize=["N", "D", "H", "stride_x", "gelu"])
def _ucb_score_kernel(
    p_x, p_w1, p_b1, p_w2, p_b2, p_w3, p_b3, p_z, p_phi, p_out,
    N, D, H, stride_x, gamma, gelu,
    DIAG: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_n = i_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_h = tl.arange(0, BLOCK_H)
    m_h = o_h < H
    o_k = tl.arange(0, BLOCK_K)

    # [BLOCK_N, BLOCK_D]
    b_x = tl.load(p_x + o_n[:, None] * stride_x + o_d[None, :], mask=m_n[:, None] & m_d[None, :],
                  other=0.0).to(tl.float32)

    # Layer 1 in column chunks, fed straight into layer 2 as its K-chunks:
    # acc2 = sum_k act(x @ w1[:, k] + b1[k]) @ w2[k, :]. Every dot has K <= BLOCK_K or BLOCK_D.
    b_acc = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        o_c = k0 + o_k
        m_c = o_c < H
        # [BLOCK_D, BLOCK_K]
        b_w1 = tl.load(p_w1 + o_d[:, None] * H + o_c[None, :], mask=m_d[:, None] & m_c[None, :],
                       other=0.0).to(tl.float32)
        # [BLOCK_K]
        b_b1 = tl.load(p_b1 + o_c, mask=m_c, other=0.0).to(tl.float32)
        b_h1 = _act(tl.dot(b_x, b_w1, input_precision="ieee") + b_b1[None, :], gelu)
        # [BLOCK_K, BLOCK_H]
        b_w2 = tl.load(p_w2 + o_c[:, None] * H + o_h[None, :], mask=m_c[:, None] & m_h[None, :],
                       other=0.0).to(tl.float32)
        b_acc += tl.dot(b_h1, b_w2, input_precision="ieee")
    # [BLOCK_H]
    b_b2 = tl.load(p_b2 + o_h, mask=m_h, other=0.0).to(tl.float32)
    b_w3 = tl.load(p_w3 + o_h, mask=m_h, other=0.0).to(tl.float32)
    # [BLOCK_N, BLOCK_H]; padding columns are exactly 0 (act(0) = 0)
    b_phi = _act(b_acc + b_b2[None, :], gelu)
    b_mean = tl.sum(b_phi * b_w3[None, :], axis=1) + tl.load(p_b3).to(tl.float32)

    if DIAG:
        # [BLOCK_H]
        b_zd = tl.load(p_z + o_h, mask=m_h, other=0.0).to(tl.float32)
        b_quad = tl.sum(b_phi * b_phi * b_zd[None, :], axis=1)
    else:
        # quad = sum_j phi_j (phi @ Z)_j. phi @ Z is taken in K-chunks of phi, read back from this
        # program's own rows of a scratch buffer (a register tile has no column slices; a full-K
        # IEEE dot would hold all of K in registers and spill).
        p_rows = p_phi + o_n[:, None] * BLOCK_H
        tl.store(p_rows + o_h[None, :], b_phi)
        tl.debug_barrier()
        b_u = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
        for c0 in range(0, H, BLOCK_K):
            o_c = c0 + o_k
            # [BLOCK_N, BLOCK_K]
            b_pc = tl.load(p_rows + o_c[None, :])
            # [BLOCK_K, BLOCK_H]
            b_z = tl.load(p_z + o_c[:, None] * H + o_h[None, :], mask=(o_c < H)[:, None] & m_h[None, :],
                          other=0.0).to(tl.float32)
            b_u += tl.dot(b_pc, b_z, input_precision="ieee")
        b_quad = tl.sum(b_u * b_phi, axis=1)
    b_bonus = gamma * tl.sqrt(tl.maximum(b_quad, 0.0))

    tl.store(p_out + o_n, b_mean + b_bonus, mask=m_n)
    tl.store(p_out + N + o_n, b_mean, mask=m_n)
    tl.store(p_out + 2 * N + o_n, b_bonus, mask=m_n)


def _check_inputs(x: torch.Tensor, weights: ScorerWeights) -> None:
    check_tensor("ucb_score", "x", x, dim=2, kind="float", expected="a 2-D tensor [N, D]")
    if x.shape[0] == 0:
        fail("ucb_score", "x", "0 rows (an empty batch)", "at least one context")
    weights.validate(num_features=int(x.shape[1]))
    if x.device != weights.device:
        fail("ucb_score", "x", f"device {x.device}", f"the device of the weights, {weights.device}")


def ucb_plan(num_features: int, hidden: int, diagonal: bool, device_type: str = "cuda",
             block_n: int | None = None) -> LaunchConfig:
    """Block sizes, warps and stages of a launch: a function of D, H and the Zinv kind only."""
    block_d = max(16, triton.next_power_of_2(num_features))
    block_h = max(16, triton.next_power_of_2(hidden))
    if device_type != "cuda":
        # Under the interpreter a program costs ~0.5 ms whatever its size: big tiles, big chunks.
        return launch_config(DIAG=diagonal, BLOCK_N=block_n or 128, BLOCK_D=block_d, BLOCK_H=block_h,
                             BLOCK_K=min(block_h, 64))
    # IEEE fp32 dots run on the FMA units with each operand's K slice in registers: K chunks of 16,
    # [BLOCK_N, BLOCK_H] tiles of at most 4096 values, 16 per thread from H = 64 on.
    return launch_config(num_warps=8 if block_h >= 64 else 4, DIAG=diagonal,
                         BLOCK_N=block_n or max(16, min(64, 4096 // block_h)), BLOCK_D=block_d, BLOCK_H=block_h,
                         BLOCK_K=16)


def _ucb_args(x: torch.Tensor, w: ScorerWeights, plan: LaunchConfig, out: torch.Tensor) -> tuple:
    """The kernel's arguments (everything but the constexprs), with the phi scratch of the dense
    bonus ([rows of the grid, BLOCK_H] fp32; x stands in for it in the diagonal case)."""
    n, d = x.shape
    meta = dict(plan.meta)
    rows = triton.cdiv(n, meta["BLOCK_N"]) * meta["BLOCK_N"]
    phi = x if w.diagonal else torch.empty((rows, meta["BLOCK_H"]), dtype=torch.float32, device=x.device)
    z = w.zinv if w.zinv is not None else w.zinv_diag
    ws = (t.contiguous() for t in (w.w1, w.b1, w.w2, w.b2, w.w3, w.b3, z))
    return (x, *ws, phi, out, n, d, w.hidden, x.stride(0), float(w.gamma), w.activation == "gelu")


def ucb_score_triton(x: torch.Tensor, weights: ScorerWeights, *, validate: bool = True,
                     block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher: one program per BLOCK_N rows, weights chunk-loaded on chip, one launch. Reads no
    device data on the host."""
    if validate:
        _check_inputs(x, weights)
    if x.stride(1) != 1:
        x = x.contiguous()
    n, d = x.shape
    plan = ucb_plan(d, weights.hidden, weights.diagonal, x.device.type, block_n)
    out = new_output((3, n), validate, x.device)
    _ucb_score_kernel[(triton.cdiv(n, dict(plan.meta)["BLOCK_N"]),)](*_ucb_args(x, weights, plan, out),
                                                                     **plan.kwargs())
    return out[0], out[1], out[2]


# ------------------------------------------------------------------ reference
def _act_ref_(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu":
        return torch.nn.functional.gelu(x)  # exact erf form, as in the kernel
    return x.relu_()


def ucb_score_reference(x: torch.Tensor, weights: ScorerWeights, *, validate: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorized PyTorch reference (fp32 matmuls, in place where it can); the CPU path."""
    if validate:
        _check_inputs(x, weights)
    w = weights
    xf = x.float()
    h1 = _act_ref_(torch.addmm(w.b1.float(), xf, w.w1.float()), w.activation)
    phi = _act_ref_(torch.addmm(w.b2.float(), h1, w.w2.float()), w.activation)
    mean = torch.addmv(w.b3.float(), phi, w.w3.float())
    if w.zinv is not None:
        quad = (phi @ w.zinv.float()).mul_(phi).sum(dim=1)
    else:
        quad = torch.mv(phi.square_(), w.zinv_diag.float())
    bonus = quad.clamp_min_(0.0).sqrt_().mul_(float(w.gamma))
    return mean + bonus, mean, bonus


def ucb_score(x: torch.Tensor, weights: ScorerWeights, *, backend: str = "auto", validate: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, mean, bonus), each [N] float32. backend: one of validation.BACKENDS ("cpu" is the
    vectorized reference)."""
    dev = x.device if isinstance(x, torch.Tensor) else None
    fn = ucb_score_triton if use_triton(backend, dev, "ucb_score") else ucb_score_reference
    return fn(x, weights, validate=validate)
