"""Task families: seeded generators, exact verifiers, noise, held-out split."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_bandits.trainer.tasks import (
    FAMILIES,
    Problem,
    TaskConfig,
    evaluate_expression,
    make_task,
    make_tasks,
    sample_prompts,
    split_of,
    verify,
    verify_batch,
)

NAMES = sorted(FAMILIES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_generator_seeded_and_reproducible(name, difficulty):
    a = make_task(name, difficulty=difficulty, seed=3)
    b = make_task(name, difficulty=difficulty, seed=3)
    assert sample_prompts(a, 20, seed=7) == sample_prompts(b, 20, seed=7)
    # The task's own stream is reproducible across instances too.
    assert a.sample(10) == b.sample(10)
    assert a.sample(10) == b.sample(10)
    big = a.sample(50, seed=1)
    assert big != a.sample(50, seed=2)
    assert all(p.family == name and p.difficulty == difficulty for p in big)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("difficulty", [1, 2, 4])
def test_reference_answers_verify(name, difficulty):
    task = make_task(name, difficulty=difficulty)
    probs = task.sample(40, seed=0) + task.sample(10, split="eval", seed=0)
    for p in probs:
        assert task.verify(p, p.answer) == 1.0, p
        assert task.verify(p, p.answer + "\nrambling after the answer") == 1.0
        assert task.verify(p, " " + p.answer + " ") == 1.0
        assert len(p.answer) <= task.max_answer_chars
        for wrong in ("", "x", p.answer + "1", "9" + p.answer + "9", p.prompt):
            assert task.verify(p, wrong) == 0.0, (p, wrong)


def test_prompt_formats():
    assert make_task("add").sample(1, seed=0)[0].prompt.endswith("=")
    p = Problem("add", "47+85=", "132", 1, (47, 85))
    t = make_task("add")
    assert t.verify(p, "132") == 1.0 and t.verify(p, "0132") == 0.0 and t.verify(p, "131") == 0.0
    assert make_task("sort").verify(Problem("sort", "s3142=", "1234", 1), "1234") == 1.0
    assert make_task("parity").verify(Problem("parity", "p1011=", "1", 1), "0") == 0.0


def test_arithmetic_answers_are_right():
    for p in make_task("add", difficulty=2).sample(50, seed=0):
        a, b = p.data
        assert p.prompt == f"{a}+{b}=" and int(p.answer) == a + b
    for p in make_task("mul", difficulty=2).sample(50, seed=0):
        a, b = p.data
        assert int(p.answer) == a * b
    for p in make_task("mod", difficulty=2).sample(50, seed=0):
        a, m = p.data
        assert int(p.answer) == a % m and m >= 2
    for p in make_task("sort").sample(50, seed=0):
        assert p.answer == "".join(sorted(p.prompt[1:-1]))
    for name, f in (("parity", lambda b: b.count("1") % 2), ("count", lambda b: b.count("1"))):
        for p in make_task(name).sample(50, seed=0):
            assert int(p.answer) == f(p.prompt[1:-1])


def test_countdown_verifier():
    t = make_task("countdown")
    p = Problem("countdown", "6,3,3>2=", "6/3", 2, ((6, 3, 3), 2))
    assert t.verify(p, "6/3") == 1.0
    assert t.verify(p, "(6/3)") == 1.0
    assert t.verify(p, "6/3/3*3") == 0.0  # 3 used three times, given twice
    r = Problem("countdown", "4,3,3>9=", "3*3", 2, ((4, 3, 3), 9))
    assert t.verify(r, "3*3") == 1.0 and t.verify(r, "3*3*3/3") == 0.0
    assert t.verify(p, "6-3-3+2") == 0.0  # 2 is not among the numbers
    assert t.verify(p, "2") == 0.0
    assert t.verify(p, "6/(3-3)") == 0.0  # division by zero
    assert t.verify(p, "-6+3+3") == 0.0  # no unary minus
    assert t.verify(p, "6//3") == 0.0
    assert t.verify(p, "__import__('os')") == 0.0
    assert t.verify(p, "(" * 200 + "6/3" + ")" * 200) == 0.0
    q = Problem("countdown", "4,9>5=", "9-4", 1, ((4, 9), 5))
    assert t.verify(q, "9-4") == 1.0 and t.verify(q, "4-9") == 0.0 and t.verify(q, "9 - 4") == 1.0
    # Generated targets are reached by the reference expression, with every number used once.
    for d in (1, 2, 3):
        for pr in make_task("countdown", difficulty=d).sample(30, seed=d):
            numbers, target = pr.data
            value, lits = evaluate_expression(pr.answer)
            assert value == target and sorted(lits) == sorted(numbers)
            assert pr.prompt == ",".join(map(str, numbers)) + f">{target}="


def test_evaluate_expression():
    assert evaluate_expression("1+2*3") == (Fraction(7), [1, 2, 3])
    assert evaluate_expression("(1+2)*3")[0] == 9
    assert evaluate_expression("7/2")[0] == Fraction(7, 2)
    assert evaluate_expression("8-2-1")[0] == 5
    for bad in ("", "1+", "(1", "1)", "1 2", "2**3", "1e3", "01", "a", "1/0", "((((" * 40 + "1"):
        with pytest.raises(ValueError):
            evaluate_expression(bad)


_TEXT = st.text(max_size=64) | st.text(alphabet="0123456789+-*/()% =\n sp,<>", max_size=40)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT, which=st.integers(0, 9))
def test_verifier_fuzz_never_raises(name, text, which):
    task = make_task(name, difficulty=1 + which % 3)
    p = task.sample(10, seed=which)[which]
    r = task.verify(p, text)
    assert r in (0.0, 1.0)
    if r == 1.0 and name != "countdown":
        assert text.split("\n")[0].strip() == p.answer


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789+-*/() ", max_size=128))
def test_expression_fuzz(text):
    try:
        value, lits = evaluate_expression(text)
    except ValueError:
        return
    assert isinstance(value, Fraction) and all(isinstance(x, int) for x in lits)


def test_verify_rejects_non_strings_and_foreign_problems():
    t = make_task("add")
    p = t.sample(1, seed=0)[0]
    with pytest.raises(ValueError):
        t.verify(p, None)
    with pytest.raises(ValueError):
        t.verify(make_task("mul").sample(1, seed=0)[0], "1")
    with pytest.raises(ValueError):
        verify_batch(t, [p, p], ["1"])


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_noise_rate(noise):
    n = 4000
    t = make_task("add", noise=noise, seed=5)
    p = t.sample(1, seed=0)[0]
    right = [verify(t, p, p.answer) for _ in range(n)]
    wrong = [verify(t, p, "nope") for _ in range(n)]
    tol = 4 * (noise * (1 - noise) / n) ** 0.5
    assert abs((1 - sum(right) / n) - noise) < tol
    assert abs(sum(wrong) / n - noise) < tol
    # Seeded: same config, same flips; an explicit rng overrides the task's stream.
    t2 = make_task("add", noise=noise, seed=5)
    assert [verify(t2, p, p.answer) for _ in range(n)] == right
    a = verify_batch(t, [p] * 50, [p.answer] * 50, rng=random.Random(1))
    b = verify_batch(t, [p] * 50, [p.answer] * 50, rng=random.Random(1))
    assert a == b
    # The noiseless verdict is unaffected.
    assert all(t.is_correct(p, p.answer) for _ in range(100))


@pytest.mark.parametrize("name", NAMES)
def test_heldout_split_disjoint(name):
    task = make_task(name, difficulty=1)
    train = {p.prompt for p in task.sample(2000, seed=0)}
    evals = task.sample(300, split="eval", seed=0)
    assert train.isdisjoint(p.prompt for p in evals)
    assert all(split_of(p.prompt) == "eval" for p in evals)
    assert all(split_of(p) == "train" for p in train)
    # The split is a function of the prompt alone: other seeds and difficulties agree.
    other = make_task(name, difficulty=2, seed=9)
    assert train.isdisjoint(p.prompt for p in other.sample(300, split="eval", seed=1))
    es = task.eval_set(15)
    assert es == task.eval_set(15) and len({p.prompt for p in es}) == 15


def test_split_fraction():
    prompts = [p.prompt for p in make_task("add", difficulty=3).sample(5000, seed=0)]
    frac = sum(split_of(q, 0.1) == "eval" for q in prompts) / len(prompts)
    assert 0.0 == frac  # train samples only
    raw = [f"{i}+{i}=" for i in range(20000)]
    frac = sum(split_of(q, 0.1) == "eval" for q in raw) / len(raw)
    assert abs(frac - 0.1) < 0.01


def test_config_errors():
    with pytest.raises(ValueError, match="name"):
        make_task("division")
    with pytest.raises(ValueError, match="difficulty"):
        make_task("add", difficulty=0)
    with pytest.raises(ValueError, match="noise"):
        make_task("add", noise=0.7)
    with pytest.raises(ValueError, match="eval_fraction"):
        TaskConfig("add", eval_fraction=1.0)
    t = make_task("add")
    with pytest.raises(ValueError, match="split"):
        t.sample(3, split="test")
    with pytest.raises(ValueError, match="distinct eval prompts"):
        make_task("parity").eval_set(10_000)
    assert [t.name for t in make_tasks()] == list(FAMILIES)
