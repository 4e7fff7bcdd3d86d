"""Verifiable task families that ship with the package (offline, exact answers).

Each family has a seeded generator with a difficulty knob, a short prompt format
a tiny char-level policy can read (``"47+85="`` -> ``"132"``, answer ended by
EOS or a newline), and an exact verifier that returns 1.0 or 0.0 and never
raises on malformed model output. Optional verifier noise flips the reward
with a seeded probability, to model noisy supervision (the "intra-group noise"
the scheduler is meant to see through).

The held-out evaluation split is a property of the prompt text alone (a hash),
so it is disjoint from training whatever the seed or difficulty. An optional
validation split (`val_fraction`, the next band of the same hash) is carved out
of the training prompts for choosing hyperparameters without looking at the
held-out split; with val_fraction = 0 (the default) the splits are as before.

Families and prompt formats (difficulty 1 shown):

=========== ================== =========== ===============================
name        prompt             answer      difficulty d
=========== ================== =========== ===============================
add         ``47+85=``         ``132``     operands < 10**(d+1)
mul         ``47*8=``          ``376``     (d+1)-digit x d-digit
mod         ``47%6=``          ``5``       a < 10**(d+1), 2 <= m < 10**d
countdown   ``3,5>15=``        ``3*5``     d+1 numbers in [1, 9d]; any
                                           expression with + - * / ( )
                                           using each number at most once
sort        ``s3142=``         ``1234``    d+3 digits
parity      ``p10110=``        ``1``       d+3 .. 2d+6 bits, parity of 1s
count       ``c10110=``        ``3``       same bits, number of 1s
=========== ================== =========== ===============================
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from rollout_bandits.validation import check_choice, check_field_types, check_float, check_int

SPLITS = ("train", "eval", "val")
MAX_DIFFICULTY = 8


# --------------------------------------------------------------------- config
@dataclass
class TaskConfig:
    """One task family at one difficulty.

    `noise` is the probability that `verify` flips its reward (seeded by
    `seed`); `eval_fraction` is the share of the prompt space (by hash) held
    out for evaluation, `val_fraction` the share set aside for validation
    (never trained on, never the held-out evaluation).
    """

    name: str
    difficulty: int = 1
    noise: float = 0.0
    seed: int = 0
    eval_fraction: float = 0.1
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        o = "TaskConfig"
        check_field_types(self)
        check_choice(o, "name", self.name, tuple(FAMILIES))
        check_int(o, "difficulty", self.difficulty, 1, MAX_DIFFICULTY)
        check_float(o, "noise", self.noise, 0.0, 0.5)
        check_float(o, "eval_fraction", self.eval_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        check_float(o, "val_fraction", self.val_fraction, 0.0, 1.0 - self.eval_fraction, hi_open=True)
        check_int(o, "seed", self.seed, None)


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer; `data` holds what the verifier needs."""

    family: str
    prompt: str
    answer: str
    difficulty: int
    data: tuple = field(default=(), compare=False)


# ------------------------------------------------------------- answer parsing
_MAX_COMPLETION_CHARS = 512


def answer_text(completion: str) -> str:
    """The answer part of a completion: up to the first newline, whitespace stripped.

    The policy ends its answer with EOS or a newline; anything after is ignored
    so that a model rambling past its answer is judged on the answer alone.
    """
    if not isinstance(completion, str):
        raise ValueError(f"completion: found {type(completion).__name__}, expected a str")
    return completion.split("\n", 1)[0].strip()


def _exact(problem: Problem, completion: str) -> bool:
    return answer_text(completion) == problem.answer


# ------------------------------------------------ countdown: safe evaluation
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(.))")
_MAX_EXPR_CHARS = 128
_MAX_DEPTH = 32


class _ExprError(Exception):
    pass


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for m in _TOKEN_RE.finditer(text):
        num, op = m.group(1), m.group(2)
        if num is not None:
            if len(num) > 6 or (len(num) > 1 and num[0] == "0"):
                raise _ExprError("bad number literal")
            tokens.append(num)
        elif op is not None:
            if op not in "+-*/()":
                raise _ExprError(f"bad character {op!r}")
            tokens.append(op)
    return tokens


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """Evaluate + - * / ( ) over non-negative integers exactly (no eval()).

    Returns the value and the integer literals used. Raises ValueError on any
    malformed input, division by zero or excessive nesting; no unary minus,
    so every literal must come from the given numbers.
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPR_CHARS:
        raise ValueError("expression: expected a str of at most 128 characters")
    try:
        tokens = _tokenize(text)
    except _ExprError as e:
        raise ValueError(f"expression: {e}") from None
    if not tokens:
        raise ValueError("expression: empty")
    pos = 0
    literals: list[int] = []

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        return tok

    def expr(depth: int) -> Fraction:
        value = term(depth)
        while peek() in ("+", "-"):
            if take() == "+":
                value = value + term(depth)
            else:
                value = value - term(depth)
        return value

    def term(depth: int) -> Fraction:
        value = factor(depth)
        while peek() in ("*", "/"):
            if take() == "*":
                value = value * factor(depth)
            else:
                rhs = factor(depth)
                if rhs == 0:
                    raise _ExprError("division by zero")
                value = value / rhs
        return value

    def factor(depth: int) -> Fraction:
        if depth > _MAX_DEPTH:
            raise _ExprError("nesting too deep")
        tok = peek()
        if tok is None:
            raise _ExprError("unexpected end")
        if tok == "(":
            take()
            value = expr(depth + 1)
            if peek() != ")":
                raise _ExprError("missing ')'")
            take()
            return value
        if tok.isdigit():
            take()
            literals.append(int(tok))
            return Fraction(int(tok))
        raise _ExprError(f"unexpected {tok!r}")

    try:
        value = expr(0)
    except _ExprError as e:
        raise ValueError(f"expression: {e}") from None
    if pos != len(tokens):
        raise ValueError(f"expression: trailing {tokens[pos]!r}")
    return value, literals


def _countdown_ok(problem: Problem, completion: str) -> bool:
    numbers, target = problem.data
    try:
        value, literals = evaluate_expression(answer_text(completion))
    except ValueError:
        return False
    if Counter(literals) - Counter(numbers):  # a literal not available, or used too often
        return False
    return value == target


# ----------------------------------------------------------------- generators
def _rand_digits(rng: random.Random, digits: int) -> int:
    return rng.randrange(10**digits)


def _gen_add(rng: random.Random, d: int) -> Problem:
    a, b = _rand_digits(rng, d + 1), _rand_digits(rng, d + 1)
    return Problem("add", f"{a}+{b}=", str(a + b), d, (a, b))


def _gen_mul(rng: random.Random, d: int) -> Problem:
    a, b = _rand_digits(rng, d + 1), _rand_digits(rng, d)
    return Problem("mul", f"{a}*{b}=", str(a * b), d, (a, b))


def _gen_mod(rng: random.Random, d: int) -> Problem:
    a, m = _rand_digits(rng, d + 1), rng.randrange(2, 10**d)
    return Problem("mod", f"{a}%{m}=", str(a % m), d, (a, m))


def _render(node) -> str:
    """Minimal-parenthesis rendering of a (op, left, right) tree of ints."""
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    ls, rs = _render(left), _render(right)
    prec = {"+": 1, "-": 1, "*": 2}
    if not isinstance(left, int) and prec[left[0]] < prec[op]:
        ls = f"({ls})"
    if not isinstance(right, int) and (prec[right[0]] < prec[op] or (op == "-" and prec[right[0]] == 1)):
        rs = f"({rs})"
    return f"{ls}{op}{rs}"


def _eval_tree(node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = _eval_tree(left), _eval_tree(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def _gen_countdown(rng: random.Random, d: int) -> Problem:
    n, hi = d + 1, 9 * d
    while True:
        numbers = [rng.randint(1, hi) for _ in range(n)]
        # The reference solution uses all numbers in a random binary tree;
        # any expression reaching the target with a sub-multiset is accepted.
        nodes: list = list(numbers)
        rng.shuffle(nodes)
        while len(nodes) > 1:
            i = rng.randrange(len(nodes) - 1)
            nodes[i : i + 2] = [(rng.choice("+-*"), nodes[i], nodes[i + 1])]
        target = _eval_tree(nodes[0])
        if 0 <= target <= 10 ** (d + 2):
            break
    prompt = ",".join(map(str, numbers)) + f">{target}="
    return Problem("countdown", prompt, _render(nodes[0]), d, (tuple(numbers), target))


def _gen_sort(rng: random.Random, d: int) -> Problem:
    digits = [rng.randrange(10) for _ in range(d + 3)]
    return Problem("sort", "s" + "".join(map(str, digits)) + "=", "".join(map(str, sorted(digits))), d)


def _bits(rng: random.Random, d: int) -> str:
    return "".join(rng.choice("01") for _ in range(rng.randint(d + 3, 2 * d + 6)))


def _gen_parity(rng: random.Random, d: int) -> Problem:
    bits = _bits(rng, d)
    return Problem("parity", f"p{bits}=", str(bits.count("1") % 2), d)


def _gen_count(rng: random.Random, d: int) -> Problem:
    bits = _bits(rng, d)
    return Problem("count", f"c{bits}=", str(bits.count("1")), d)


@dataclass(frozen=True)
class Family:
    """A generator, an exact checker, and the longest answer at a difficulty (for generation)."""

    name: str
    generate: Callable[[random.Random, int], Problem]
    check: Callable[[Problem, str], bool]
    max_answer_chars: Callable[[int], int]


FAMILIES: dict[str, Family] = {
    "add": Family("add", _gen_add, _exact, lambda d: d + 2),
    "mul": Family("mul", _gen_mul, _exact, lambda d: 2 * d + 1),
    "mod": Family("mod", _gen_mod, _exact, lambda d: d),
    "countdown": Family("countdown", _gen_countdown, _countdown_ok, lambda d: 4 * (d + 1) + 4 * d),
    "sort": Family("sort", _gen_sort, _exact, lambda d: d + 3),
    "parity": Family("parity", _gen_parity, _exact, lambda d: 1),
    "count": Family("count", _gen_count, _exact, lambda d: len(str(2 * d + 6))),
}


# ------------------------------------------------------------------ the task
def split_of(prompt: str, eval_fraction: float = 0.1, val_fraction: float = 0.0) -> str:
    """'eval', 'val' or 'train' from a stable hash of the prompt text (seed-independent): the
    lowest `eval_fraction` of the hash range is held out, the next `val_fraction` validation."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "big")
    if h < eval_fraction * 2.0**64:
        return "eval"
    return "val" if h < (eval_fraction + val_fraction) * 2.0**64 else "train"


class Task:
    """A configured family: sample problems from a split, verify completions."""

    def __init__(self, config: TaskConfig):
        self.config = config
        self.family = FAMILIES[config.name]
        # Separate streams: drawing prompts never shifts the noise sequence.
        self._sample_rng = random.Random(f"sample:{config.name}:{config.seed}")
        self._noise_rng = random.Random(f"noise:{config.name}:{config.seed}")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def max_answer_chars(self) -> int:
        return self.family.max_answer_chars(self.config.difficulty)

    def __repr__(self) -> str:
        c = self.config
        return f"Task({c.name!r}, difficulty={c.difficulty}, noise={c.noise}, seed={c.seed})"

    def sample(self, n: int, split: str = "train", seed: int | None = None) -> list[Problem]:
        """n i.i.d. problems from `split`; with `seed` reproducible, else from the task's stream."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n: found {n!r}, expected an int >= 0")
        if split not in SPLITS:
            raise ValueError(f"split: found {split!r}, expected one of {SPLITS}")
        rng = self._sample_rng if seed is None else random.Random(f"{self.name}:{seed}:{split}")
        out: list[Problem] = []
        budget = 1000 + 200 * n
        while len(out) < n:
            budget -= 1
            if budget < 0:
                raise ValueError(
                    f"{self!r}: no {split!r} prompts found after many draws; the prompt space at this "
                    f"difficulty is too small for eval_fraction={self.config.eval_fraction}"
                )
            p = self.family.generate(rng, self.config.difficulty)
            if self.split_of(p.prompt) == split:
                out.append(p)
        return out

    def split_of(self, prompt: str) -> str:
        return split_of(prompt, self.config.eval_fraction, self.config.val_fraction)

    def eval_set(self, n: int, seed: int = 0, split: str = "eval", allow_fewer: bool = False) -> list[Problem]:
        """n distinct problems of `split` (held-out by default), the same for every call with the
        same seed. At low difficulty a family's split may hold fewer than n prompts: then a
        ValueError, or with `allow_fewer` every distinct prompt a long search finds (the split's
        whole population but for prompts rarer than about 1 in (500 / split share + 5000) draws)."""
        if split not in SPLITS:
            raise ValueError(f"split: found {split!r}, expected one of {SPLITS}")
        rng = random.Random(f"{self.name}:evalset:{seed}" if split == "eval" else f"{self.name}:{split}set:{seed}")
        share = {"eval": self.config.eval_fraction, "val": self.config.val_fraction}.get(
            split, 1.0 - self.config.eval_fraction - self.config.val_fraction)
        if share <= 0:
            raise ValueError(f"{self!r}: the {split!r} split is empty (val_fraction=0)")
        seen: dict[str, Problem] = {}
        # Give up once many draws in a row bring nothing new: the space is exhausted.
        patience = int(500 / share) + 5000 if allow_fewer else int(50 / share) + 1000
        stale = 0
        while len(seen) < n:
            stale += 1
            if stale > patience:
                if allow_fewer:
                    break
                raise ValueError(
                    f"{self!r}: only {len(seen)} distinct {split} prompts found, {n} asked; "
                    "ask for fewer or raise the difficulty"
                )
            p = self.family.generate(rng, self.config.difficulty)
            if self.split_of(p.prompt) == split and p.prompt not in seen:
                seen[p.prompt] = p
                stale = 0
        return list(seen.values())

    def is_correct(self, problem: Problem, completion: str) -> bool:
        """The noiseless verdict; never raises on malformed completions."""
        if not isinstance(problem, Problem) or problem.family != self.name:
            raise ValueError(f"problem: found {problem!r}, expected a Problem of family {self.name!r}")
        if not isinstance(completion, str):
            raise ValueError(f"completion: found {type(completion).__name__}, expected a str")
        if len(completion) > _MAX_COMPLETION_CHARS:
            completion = completion[:_MAX_COMPLETION_CHARS]  # only the first line is judged anyway
        try:
            return bool(self.family.check(problem, completion))
        except Exception:  # a verifier bug must not kill a training run; malformed == wrong
            return False

    def verify(self, problem: Problem, completion: str, rng: random.Random | None = None) -> float:
        """1.0 or 0.0, flipped with probability `config.noise` (seeded)."""
        r = 1.0 if self.is_correct(problem, completion) else 0.0
        if self.config.noise > 0.0:
            if (rng or self._noise_rng).random() < self.config.noise:
                r = 1.0 - r
        return r


# ----------------------------------------------------------- module helpers
def make_task(name: str, difficulty: int = 1, noise: float = 0.0, seed: int = 0, eval_fraction: float = 0.1,
              val_fraction: float = 0.0) -> Task:
    return Task(TaskConfig(name, difficulty=difficulty, noise=noise, seed=seed, eval_fraction=eval_fraction,
                           val_fraction=val_fraction))


def make_tasks(names: Sequence[str] | None = None, **kwargs) -> list[Task]:
    """One task per family (all of them by default), sharing the other settings."""
    return [make_task(n, **kwargs) for n in (names or list(FAMILIES))]


def sample_prompts(task: Task, n: int, split: str = "train", seed: int | None = None) -> list[Problem]:
    return task.sample(n, split=split, seed=seed)


def verify(task: Task, problem: Problem, completion: str, rng: random.Random | None = None) -> float:
    return task.verify(problem, completion, rng=rng)


def verify_batch(
    task: Task, problems: Sequence[Problem], completions: Sequence[str], rng: random.Random | None = None
) -> list[float]:
    if len(problems) != len(completions):
        raise ValueError(
            f"completions: found {len(completions)}, expected {len(problems)} (one per problem)"
        )
    return [task.verify(p, c, rng=rng) for p, c in zip(problems, completions, strict=True)]


__all__ = [
    "FAMILIES",
    "Family",
    "Problem",
    "Task",
    "TaskConfig",
    "answer_text",
    "evaluate_expression",
    "make_task",
    "make_tasks",
    "sample_prompts",
    "split_of",
    "verify",
    "verify_batch",
]
