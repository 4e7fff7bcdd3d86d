"""Natural-language questions for the task families, and answers pulled out of free-text replies."""

from __future__ import annotations

import pytest
from _chat_model import chat_tokenizer

from rollout_bandits.trainer.chat_tasks import (
    chat_prompt,
    end_of_turn_id,
    extract_answer,
    is_correct,
    question,
)
from rollout_bandits.trainer.profile import chat_token_ids
from rollout_bandits.trainer.tasks import FAMILIES, make_task

REPLIES = {  # family: (reply template with {a} for the reference answer, expected extraction)
    "plain": "{a}",
    "sentence": "The answer is {a}.",
    "boxed": "Let me think. So we get \\boxed{{{a}}}",
    "equation": "{q} = {a}",
    "answer_colon": "Working: blah 99 blah\nAnswer: {a}",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_question_mentions_the_problem_and_reference_answers_pass(family):
    task = make_task(family, difficulty=2)
    for p in task.sample(20, seed=1):
        q = question(p)
        assert q.endswith(".") and len(q) < 200
        if family in ("add", "mul", "mod"):
            assert all(str(x) in q for x in p.data)
        answer = {"parity": "odd" if p.answer == "1" else "even",
                  "sort": " ".join(p.answer)}.get(family, p.answer)
        for style, template in REPLIES.items():
            if style == "equation" and family not in ("add", "mul", "countdown"):
                continue
            reply = template.format(a=answer, q="x")
            assert is_correct(task, p, reply), (style, reply, extract_answer(family, reply))


def test_wrong_and_malformed_replies_fail():
    add = make_task("add")
    p = add.sample(1, seed=0)[0]
    wrong = str(int(p.answer) + 1)
    for reply in (wrong, f"The answer is {wrong}.", "", "I don't know", f"\\boxed{{{wrong}}} not {p.answer}"):
        assert not is_correct(add, p, reply), reply
    # The final answer wins over numbers said before it.
    assert is_correct(add, p, f"{p.data[0]} + {p.data[1]} = {p.answer}")
    assert extract_answer("count", "There are 1,234 ones") == "1234"
    assert extract_answer("parity", "Three 1s, so it is odd. Final: even") == "0"
    assert extract_answer("sort", "The digits 3 1 4 2 sorted are 1, 2, 3, 4.") == "1234"
    assert extract_answer("countdown", "We can do 3 \u00d7 5 = 15") == "3 * 5"
    assert extract_answer("countdown", "no expression here") == ""
    with pytest.raises(ValueError, match="extract_answer.family: found 'nope'"):
        extract_answer("nope", "1")


def test_countdown_checks_the_numbers_used():
    task = make_task("countdown")
    p = task.sample(1, seed=3)[0]
    numbers, target = p.data
    assert is_correct(task, p, f"Expression: {p.answer}")
    assert not is_correct(task, p, f"{target} + 0 - 0")  # literals not among the numbers


def test_chat_prompt_and_end_of_turn():
    tok = chat_tokenizer()
    text = chat_prompt(tok, "What is 1 + 1?")
    assert text == "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == eot != tok.eos_token_id
    ids = chat_token_ids(tok)
    assert ids.eos_id == eot and ids.bos_id is None  # the template carries its own start tokens
    assert ids.encode(text)[0] == tok.convert_tokens_to_ids("<|im_start|>")
    tok.chat_template = None
    assert chat_prompt(tok, "q") == "q" and end_of_turn_id(tok) is None
