"""The task families as short natural-language questions, for real instruct models.

The embedded policy reads terse prompts (``47+85=``); a pretrained chat model needs a question in
words, sent through its chat template, and answers in free text ("The answer is 132."). Here each
family gets a one-line question built from the same `Problem`, and `extract_answer` pulls the
final answer out of the reply in the family's canonical form, so the same exact verifier
(`Task.is_correct` / `Task.verify`) judges it. Extraction order: the last ``\\boxed{...}``, else
what follows the last "answer is" / "answer:", else the end of the reply.
"""

from __future__ import annotations

import re

from rollout_bandits.trainer.tasks import FAMILIES, Problem, Task
from rollout_bandits.validation import fail

_NUMBER = re.compile(r"-?\d[\d,]*")
_DIGIT_RUN = re.compile(r"\d(?:[\s,]*\d)*")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER = re.compile(r"answer\s*(?:is|:)\s*", re.I)
_PARITY = re.compile(r"\b(even|odd)\b", re.I)
_EXPR_CHARS = re.compile(r"[^\d+\-*/() ]")
_OPERATOR = re.compile(r"\d\s*[+\-*/]\s*\(?\s*\d")
_MAX_REPLY_CHARS = 2048


def _bits(problem: Problem) -> str:
    return problem.prompt[1:-1]  # "p10110=" / "c10110="


def question(problem: Problem) -> str:
    """A one-line question for `problem`, asking for a short final answer."""
    f = problem.family
    if f == "add":
        a, b = problem.data
        return f"What is {a} + {b}? Reply with the number only."
    if f == "mul":
        a, b = problem.data
        return f"What is {a} times {b}? Reply with the number only."
    if f == "mod":
        a, m = problem.data
        return f"What is the remainder when {a} is divided by {m}? Reply with the number only."
    if f == "countdown":
        numbers, target = problem.data
        return (f"Using the numbers {', '.join(map(str, numbers))} (each at most once) with +, -, * and /, "
                f"write an expression equal to {target}. Reply with the expression only.")
    if f == "sort":
        return f"Sort the digits {' '.join(problem.prompt[1:-1])} in ascending order. Reply with the digits only."
    if f == "parity":
        return f"Is the number of 1s in the bit string {_bits(problem)} even or odd? Reply with one word."
    if f == "count":
        return f"How many 1s are in the bit string {_bits(problem)}? Reply with the number only."
    fail("question", "problem.family", repr(f), " | ".join(FAMILIES))


def _final_part(reply: str) -> str:
    """The part of a reply that holds the final answer."""
    boxed = _BOXED.findall(reply)
    if boxed:
        return boxed[-1]
    marks = list(_ANSWER.finditer(reply))
    if marks:
        return reply[marks[-1].end():]
    return reply


def _last_number(text: str) -> str:
    nums = _NUMBER.findall(text)
    if not nums:
        return ""
    return nums[-1].replace(",", "").rstrip(",")


def _expression(text: str) -> str:
    """The last arithmetic expression: of each line's '='-separated parts, the last one with an operator."""
    text = text.replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-")
    for line in reversed(text.splitlines()):
        for part in reversed(line.split("=")):
            if _OPERATOR.search(part):
                return " ".join(_EXPR_CHARS.sub(" ", part).split())
    return ""


def extract_answer(family: str, reply: str) -> str:
    """The reply's final answer in the canonical form `Task.is_correct` compares ("" when none)."""
    if not isinstance(reply, str):
        fail("extract_answer", "reply", type(reply).__name__, "a str")
    if family not in FAMILIES:
        fail("extract_answer", "family", repr(family), " | ".join(FAMILIES))
    part = _final_part(reply[:_MAX_REPLY_CHARS])
    if family == "countdown":
        return _expression(part)
    if family == "sort":
        runs = _DIGIT_RUN.findall(part)
        return re.sub(r"\D", "", runs[-1]) if runs else ""
    if family == "parity":
        words = _PARITY.findall(part)
        if words:
            return "0" if words[-1].lower() == "even" else "1"
    return _last_number(part)


def is_correct(task: Task, problem: Problem, reply: str) -> bool:
    """The noiseless verdict on a free-text reply."""
    return task.is_correct(problem, extract_answer(task.name, reply))


def chat_prompt(tokenizer, text: str) -> str:
    """`text` as the user turn of the tokenizer's chat template, ready for the assistant's reply
    (the text itself where the tokenizer has no template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def end_of_turn_id(tokenizer) -> int | None:
    """The token that closes an assistant turn in the chat template (e.g. <|im_end|>), which is
    where a chat model stops; None without a template or when the turn ends in plain text."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "rollout-bandits-end-marker"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    tail = rendered.split(marker, 1)[1] if marker in rendered else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return int(ids[0]) if ids and ids[0] in special else None


__all__ = ["chat_prompt", "end_of_turn_id", "extract_answer", "is_correct", "question"]
