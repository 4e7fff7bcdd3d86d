"""math-verify reward, benchmark JSONL loaders (each documented layout), Avg@k."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_bandits.trainer.math_reward import (
    BENCHMARK_SCHEMAS,
    BOXED_INSTRUCTION,
    MathRewardConfig,
    avg_at_k,
    last_boxed,
    load_math_jsonl,
    math_reward,
    normalize_answer,
)


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("so the answer is \\boxed{204}.", "204"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\frac12}", "\\frac{1}{2}"),
        ("\\boxed{(3,\\frac{\\pi}{2})}", "(3, \\frac{\\pi}{2})"),
        ("\\boxed{27.0}", "27"),
        ("\\boxed{1+x^2}", "x^2+1"),
        ("\\boxed{6 \\sqrt 2}", "6\\sqrt{2}"),
        ("first \\boxed{3} then finally \\boxed{5}", "5"),
        ("\\boxed{5}", "$5$"),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ],
)
def test_boxed_correct(completion, answer):
    assert math_reward(completion, answer) == 1.0


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("\\boxed{13}", "12"),
        ("the answer is 12", "12"),  # no \boxed{} -> 0 by default
        ("\\boxed{5} then \\boxed{3}", "5"),  # the last box counts
        ("\\boxed{12", "12"),  # unbalanced
        ("", "12"),
        ("\\boxed{}", "12"),
    ],
)
def test_boxed_wrong_or_malformed(completion, answer):
    assert math_reward(completion, answer) == 0.0


def test_require_boxed_off_and_non_strings():
    assert math_reward("the answer is $12$", "12", MathRewardConfig(require_boxed=False)) == 1.0
    assert math_reward(None, "12") == 0.0
    assert math_reward("\\boxed{12}", None) == 0.0
    assert math_reward("\\boxed{12}", "") == 0.0
    with pytest.raises(ValueError):
        MathRewardConfig(timeout_s=-1)


def test_works_off_the_main_thread():
    out = []
    th = threading.Thread(target=lambda: out.append(math_reward("\\boxed{\\frac{2}{4}}", "\\frac12")))
    th.start()
    th.join()
    assert out == [1.0]


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=40) | st.text(alphabet="\\boxed{}()^_0123456789+-=frac$ ", max_size=40))
def test_reward_fuzz_never_raises(text):
    assert math_reward(text, "12") in (0.0, 1.0)
    assert math_reward("\\boxed{12}", text) in (0.0, 1.0)


def test_last_boxed_and_normalize():
    assert last_boxed("a \\boxed{x^{2}} b") == "x^{2}"
    assert last_boxed("\\fbox{1} \\boxed{2}") == "2"
    assert last_boxed("nothing") is None and last_boxed("\\boxed{open") is None
    assert normalize_answer(27.0) == "27" and normalize_answer(2.5) == "2.5" and normalize_answer(7) == "7"
    assert normalize_answer(["$\\frac{1}{2}$"]) == "\\frac{1}{2}"
    assert normalize_answer(["$1$", "$2$"]) == "1, 2"
    assert normalize_answer("\\boxed{42}") == "42"
    for bad in ("", [], None, "$ $"):
        with pytest.raises(ValueError):
            normalize_answer(bad)


# One record per documented layout, as the common Hugging Face copies write them.
LAYOUTS = {
    "math500": [{"problem": "What is 1+1?", "solution": "It is \\boxed{2}.", "answer": "2",
                 "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}],
    "aime24": [
        {"id": 60, "problem": "Find N.", "solution": "...", "answer": "204", "url": "u", "year": "2024"},
        {"ID": "2024-I-1", "Problem": "Find M.", "Solution": "...", "Answer": 204},
        {"id": 3, "problem": "Find K.", "solution": "\\boxed{204}", "url": "u"},
    ],
    "aime25": [{"problem": "Find N.", "answer": "70", "id": "0"}, {"question": "Find M.", "answer": "588"}],
    "amc23": [{"id": 0, "question": "How many?", "answer": 27.0, "url": "u"},
              {"problem": "How many?", "answer": "27"}],
    "minerva": [{"question": "Compute v.", "answer": "4.5"},
                {"problem": "Compute w.", "solution": "So $w = \\boxed{3 \\times 10^{8}}$.", "type": "x", "idx": 4}],
    "olympiadbench": [{"id": 1606, "question": "Find x.", "solution": ["..."], "final_answer": ["$\\frac{1}{2}$"],
                       "is_multiple_answer": False, "unit": None, "answer_type": "Numerical"}],
}
EXPECTED = {
    "math500": [("What is 1+1?", "2", "test/algebra/1.json")],
    "aime24": [("Find N.", "204", "60"), ("Find M.", "204", "2024-I-1"), ("Find K.", "204", "3")],
    "aime25": [("Find N.", "70", "0"), ("Find M.", "588", "1")],
    "amc23": [("How many?", "27", "0"), ("How many?", "27", "1")],
    "minerva": [("Compute v.", "4.5", "0"), ("Compute w.", "3 \\times 10^{8}", "4")],
    "olympiadbench": [("Find x.", "\\frac{1}{2}", "1606")],
}


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n\n")  # blank lines are skipped
    return path


@pytest.mark.parametrize("bench", sorted(LAYOUTS))
def test_loader_each_layout(tmp_path, bench):
    assert bench in BENCHMARK_SCHEMAS
    path = _write(tmp_path / f"{bench}.jsonl", LAYOUTS[bench])
    for name in (bench, None):
        rows = load_math_jsonl(path, benchmark=name)
        assert [(r["prompt"], r["answer"], r["id"]) for r in rows] == EXPECTED[bench]
        assert all(set(r) == {"prompt", "answer", "id", "benchmark"} for r in rows)
    assert len(load_math_jsonl(path, bench, limit=1)) == 1
    assert load_math_jsonl(path, bench.upper())[0]["benchmark"] == bench


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_math_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="benchmark"):
        load_math_jsonl(_write(tmp_path / "a.jsonl", LAYOUTS["aime25"]), benchmark="gsm8k")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match=":2: not valid JSON"):
        load_math_jsonl(bad)
    with pytest.raises(ValueError, match="no answer field"):
        load_math_jsonl(_write(tmp_path / "c.jsonl", [{"problem": "x", "solution": "no box"}]))
    with pytest.raises(ValueError, match="no prompt field"):
        load_math_jsonl(_write(tmp_path / "d.jsonl", [{"text": "x", "answer": "1"}]))
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        load_math_jsonl(empty)


def test_avg_at_k_fake_generator(tmp_path):
    rows = load_math_jsonl(_write(tmp_path / "m.jsonl", [
        {"problem": "p0", "answer": "1"}, {"problem": "p1", "answer": "2"}, {"problem": "p2", "answer": "3"},
    ]))
    seen = []

    def fake_generate(prompts, k):
        seen.extend(prompts)
        # p0: all right; p1: 1 of 4 right; p2: none right.
        answers = {"p0": ["1"] * k, "p1": ["2"] + ["9"] * (k - 1), "p2": ["0"] * k}
        return [[f"\\boxed{{{a}}}" for a in answers[p.split("\n")[0]]] for p in prompts]

    res = avg_at_k(rows, fake_generate, k=4, prompt_template=BOXED_INSTRUCTION)
    assert res["per_problem"] == [1.0, 0.25, 0.0]
    assert res["avg_at_k"] == pytest.approx(1.25 / 3)
    assert res["pass_at_k"] == pytest.approx(2 / 3)
    assert res["k"] == 4 and res["n"] == 3
    assert seen[0].startswith("p0\n") and "\\boxed{}" in seen[0]

    with pytest.raises(ValueError, match="k="):
        avg_at_k(rows, lambda ps, k: [["\\boxed{1}"]] * len(ps), k=4)
    with pytest.raises(ValueError, match="one per prompt"):
        avg_at_k(rows, lambda ps, k: [], k=1)
    with pytest.raises(ValueError, match="k:"):
        avg_at_k(rows, fake_generate, k=0)
    with pytest.raises(ValueError, match="problems"):
        avg_at_k([], fake_generate, k=1)
