r"""Math answers: a `math-verify` reward for \boxed{} answers, benchmark loaders, Avg@k.

The paper reports Avg@k on six math benchmarks (MATH500 Avg@4, AIME24 Avg@32,
...). Those data sets are not shipped and nothing is downloaded: the loader
reads local JSONL files in the layouts the usual Hugging Face copies use and
normalizes every row to ``{"prompt", "answer", "id", "benchmark"}``.

Field names per benchmark (first key found wins; `answer` may instead be
the last ``\boxed{}`` of the solution when a copy ships no answer field):

============== ====================================== ==================================
benchmark      common copies                          fields
============== ====================================== ==================================
math500        HuggingFaceH4/MATH-500                 problem, answer, solution,
                                                      subject, level, unique_id
aime24         HuggingFaceH4/aime_2024;               id, problem, answer, solution, url,
               Maxwell-Jia/AIME_2024;                 year | ID, Problem, Answer,
               math-ai/aime24                         Solution | id, problem, solution
                                                      (answer only as \boxed{} there)
aime25         math-ai/aime25; yentinglin/aime_2025;  problem, answer, id | question,
               opencompass/AIME2025                   answer
amc23          math-ai/amc23 (zwhe99/amc23);          question, answer (a float such as
               knoveleng/AMC-23                       27.0), id, url | problem, answer
minerva        math-ai/minervamath; Qwen2.5-Math      question, answer | problem,
               eval minerva_math/test.jsonl           solution (answer in \boxed{}),
                                                      type, idx
olympiadbench  Hothan/OlympiadBench (OE_TO_maths_en); question, final_answer (a list of
               Qwen2.5-Math eval olympiadbench        "$...$" strings), solution (list),
                                                      id, unit, answer_type, ...
============== ====================================== ==================================
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# ------------------------------------------------------------------ schemas
BENCHMARK_SCHEMAS: dict[str, dict[str, tuple[str, ...]]] = {
    "math500": {"prompt": ("problem",), "answer": ("answer",), "solution": ("solution",),
                "id": ("unique_id", "id")},
    "aime24": {"prompt": ("problem", "Problem", "question"), "answer": ("answer", "Answer"),
               "solution": ("solution", "Solution"), "id": ("id", "ID")},
    "aime25": {"prompt": ("problem", "question", "Problem"), "answer": ("answer", "Answer"),
               "solution": ("solution", "Solution"), "id": ("id", "ID")},
    "amc23": {"prompt": ("question", "problem"), "answer": ("answer",), "solution": ("solution",),
              "id": ("id",)},
    "minerva": {"prompt": ("problem", "question"), "answer": ("answer",), "solution": ("solution",),
                "id": ("idx", "id")},
    "olympiadbench": {"prompt": ("question", "problem"), "answer": ("final_answer", "answer"),
                      "solution": ("solution",), "id": ("id", "idx")},
}
# Used when no benchmark is named: the union, most common keys first.
GENERIC_SCHEMA: dict[str, tuple[str, ...]] = {
    "prompt": ("problem", "question", "Problem", "Question", "prompt"),
    "answer": ("answer", "final_answer", "Answer", "expected_answer"),
    "solution": ("solution", "Solution"),
    "id": ("unique_id", "id", "ID", "idx"),
}

BOXED_INSTRUCTION = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) with balanced braces, else None."""
    if not isinstance(text, str):
        return None
    best = None
    for macro in ("\\boxed", "\\fbox"):
        i = text.rfind(macro)
        if i >= 0 and (best is None or i > best[0]):
            best = (i, macro)
    if best is None:
        return None
    j = best[0] + len(best[1])
    while j < len(text) and text[j] == " ":
        j += 1
    if j >= len(text) or text[j] != "{":
        return None
    depth, start = 0, j + 1
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[start:k]
    return None


def normalize_answer(value) -> str:
    """A reference answer as a bare LaTeX string: lists joined, 27.0 -> 27, $...$ and \\boxed{} removed."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("answer: found an empty list, expected at least one answer")
        return ", ".join(normalize_answer(v) for v in value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"answer: found {value!r}, expected a string or a number")
    if isinstance(value, float):
        value = str(int(value)) if value.is_integer() else repr(value)
    s = str(value).strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    boxed = last_boxed(s)
    if boxed is not None and s.startswith(("\\boxed", "\\fbox")):
        s = boxed.strip()
    if not s:
        raise ValueError("answer: found an empty string")
    return s


def _first(row: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in row and row[k] not in (None, "", []):
            return row[k]
    return None


def normalize_row(row: dict, benchmark: str | None = None, index: int = 0) -> dict:
    """One raw benchmark record -> {prompt, answer, id, benchmark}."""
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: found {type(row).__name__}, expected a JSON object")
    schema = GENERIC_SCHEMA if benchmark is None else BENCHMARK_SCHEMAS[benchmark]
    prompt = _first(row, schema["prompt"])
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"row {index}: no prompt field among {list(schema['prompt'])}; keys found {sorted(row)}")
    answer = _first(row, schema["answer"])
    if answer is None:
        sol = _first(row, schema["solution"])
        if isinstance(sol, list) and sol:
            sol = sol[-1]
        answer = last_boxed(sol) if isinstance(sol, str) else None
        if answer is None:
            raise ValueError(
                f"row {index}: no answer field among {list(schema['answer'])} and no \\boxed{{}} in "
                f"{list(schema['solution'])}; keys found {sorted(row)}"
            )
    try:
        answer = normalize_answer(answer)
    except ValueError as e:
        raise ValueError(f"row {index}: {e}") from None
    rid = _first(row, schema["id"])
    return {"prompt": prompt, "answer": answer, "id": str(rid if rid is not None else index),
            "benchmark": benchmark or "generic"}


def load_math_jsonl(path: str | os.PathLike, benchmark: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows of a local JSONL benchmark file, normalized to {prompt, answer, id, benchmark}.

    `benchmark` (one of BENCHMARK_SCHEMAS) picks that layout's field names;
    None tries the common names of all of them.
    """
    if benchmark is not None:
        benchmark = benchmark.lower().replace("-", "").replace("_", "")
        if benchmark not in BENCHMARK_SCHEMAS:
            raise ValueError(f"benchmark: found {benchmark!r}, expected one of {sorted(BENCHMARK_SCHEMAS)} or None")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: {path!r} does not exist (benchmarks are read from local files only)")
    out: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            try:
                out.append(normalize_row(row, benchmark, index=len(out)))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"path: {path!r} holds no records")
    return out


# ------------------------------------------------------------------- reward
@dataclass
class MathRewardConfig:
    """`require_boxed`: no \\boxed{} -> 0 (what RLVR math recipes reward); timeouts guard sympy."""

    require_boxed: bool = True
    timeout_s: int = 5
    float_rounding: int = 6

    def __post_init__(self) -> None:
        if not isinstance(self.timeout_s, int) or self.timeout_s < 0:
            raise ValueError(f"MathRewardConfig.timeout_s: found {self.timeout_s!r}, expected an int >= 0")
        if not isinstance(self.float_rounding, int) or self.float_rounding < 0:
            raise ValueError(f"MathRewardConfig.float_rounding: found {self.float_rounding!r}, expected an int >= 0")


def _strip_ws(s: str) -> str:
    return "".join(s.split())


def math_reward(completion: str, answer: str, config: MathRewardConfig | None = None) -> float:
    r"""1.0 if the completion's last \boxed{} equals `answer` under math-verify, else 0.0. Never raises."""
    cfg = config or MathRewardConfig()
    try:
        from math_verify import parse
        from math_verify import verify as mv_verify

        if not isinstance(completion, str) or not isinstance(answer, str):
            return 0.0
        boxed = last_boxed(completion)
        if boxed is None and cfg.require_boxed:
            return 0.0
        gold_text = normalize_answer(answer)
        # math-verify's timeouts use SIGALRM, which only the main thread may set.
        t = cfg.timeout_s if threading.current_thread() is threading.main_thread() else None
        t = t or None
        if boxed is not None and _strip_ws(boxed) == _strip_ws(gold_text):
            return 1.0
        pred_src = "\\boxed{" + boxed + "}" if boxed is not None else completion
        gold = parse("\\boxed{" + gold_text + "}", parsing_timeout=t)
        pred = parse(pred_src, parsing_timeout=t)
        if not gold or not pred:
            return 0.0
        ok = mv_verify(gold, pred, float_rounding=cfg.float_rounding, timeout_seconds=t)
        return 1.0 if ok else 0.0
    except BaseException as e:  # math-verify's TimeoutException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return 0.0


# -------------------------------------------------------------------- Avg@k
GenerateFn = Callable[[list[str], int], Sequence[Sequence[str]]]


def avg_at_k(
    problems: Sequence[dict],
    generate_fn: GenerateFn,
    k: int,
    reward_fn: Callable[[str, str], float] | None = None,
    prompt_template: str = "{prompt}",
) -> dict:
    """Avg@k = mean over problems of the mean correctness of k samples (also pass@k).

    `generate_fn(prompts, k)` returns k completions per prompt; `problems` are
    normalized rows ({prompt, answer}).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: found {k!r}, expected an int >= 1")
    if not problems:
        raise ValueError("problems: found an empty sequence, expected at least one problem")
    reward_fn = reward_fn or math_reward
    for i, p in enumerate(problems):
        if not isinstance(p, dict) or "prompt" not in p or "answer" not in p:
            raise ValueError(f"problems[{i}]: expected a dict with 'prompt' and 'answer' (see load_math_jsonl)")
    prompts = [prompt_template.format(prompt=p["prompt"]) for p in problems]
    samples = generate_fn(prompts, k)
    if len(samples) != len(problems):
        raise ValueError(f"generate_fn: returned {len(samples)} lists, expected {len(problems)} (one per prompt)")
    per_problem = []
    for i, (p, comps) in enumerate(zip(problems, samples, strict=True)):
        if isinstance(comps, str) or len(comps) != k:
            raise ValueError(f"generate_fn: problem {i} got {len(comps)} completions, expected k={k}")
        per_problem.append(sum(float(reward_fn(c, p["answer"])) for c in comps) / k)
    n = len(per_problem)
    return {
        "avg_at_k": sum(per_problem) / n,
        "pass_at_k": sum(1.0 for s in per_problem if s > 0) / n,
        "per_problem": per_problem,
        "k": k,
        "n": n,
    }


__all__ = [
    "BENCHMARK_SCHEMAS",
    "BOXED_INSTRUCTION",
    "GENERIC_SCHEMA",
    "MathRewardConfig",
    "avg_at_k",
    "last_boxed",
    "load_math_jsonl",
    "math_reward",
    "normalize_answer",
    "normalize_row",
]
