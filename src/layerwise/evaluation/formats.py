"""How each task's rows become rank-classification examples, as OLMo's in-loop evaluation writes
them (OLMES "cloze" formulation): a context, one continuation per choice, the gold choice.

Every continuation starts with a space, so the model scores the choice as the next word after
the context. Only the row -> strings mapping lives here; reading the files and naming the tasks
is `layerwise.evaluation.tasks`. A formatter raises KeyError, IndexError, TypeError or
ValueError on a row without the fields it needs; the reader turns that into a UserError naming
the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Example:
    """One question: choice i is `contexts[i]` (or the only context) followed by
    `continuations[i]` (or the only continuation). Winogrande's partial scoring has several
    contexts and one shared continuation; every other task one context and several
    continuations."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int

    @property
    def n_choices(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def choice(self, index: int) -> tuple[str, str]:
        """(context, continuation) of choice `index`."""
        context = self.contexts[index if len(self.contexts) > 1 else 0]
        continuation = self.continuations[index if len(self.continuations) > 1 else 0]
        return context, continuation


def _example(context: str, choices: list[str], gold: int) -> Example:
    """A one-context example; the gold index is checked so a bad label fails at its row."""
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold choice {gold} out of range for {len(choices)} choices")
    return Example((context,), tuple(f" {choice}" for choice in choices), gold)


def question_answer(row: Row) -> Example:
    """ARC-Easy/Challenge, CommonsenseQA, basic arithmetic: lettered (or numbered) choices."""
    choices = row["choices"]
    return _example(
        f"Question: {row['question']}\nAnswer:",
        list(choices["text"]),
        list(choices["label"]).index(row["answerKey"]),
    )


def hellaswag_clean(text: str) -> str:
    """WikiHow artefacts out: " [title]" marks a sentence end, other bracketed markers go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: Row) -> Example:
    context = f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}"
    endings = [hellaswag_clean(ending) for ending in row["endings"]]
    return _example(hellaswag_clean(context), endings, int(row["label"]))


def piqa(row: Row) -> Example:
    return _example(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], row["label"])


def sciq(row: Row) -> Example:
    """Gold last: with ties counted as wrong, an untrained model's equal scores cannot win.

    The context is stripped as OLMo strips it, so a row without support starts at "Question:".
    """
    context = f"{row['support']}\nQuestion: {row['question']}\nAnswer:".strip()
    choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    return _example(context, choices, 3)


def openbookqa(row: Row) -> Example:
    choices = row["choices"]
    return _example(
        row["question_stem"], list(choices["text"]), list(choices["label"]).index(row["answerKey"])
    )


def social_iqa(row: Row) -> Example:
    return _example(
        f"Question: {row['context']} {row['question']}\nAnswer:",
        [row["answerA"], row["answerB"], row["answerC"]],
        int(row["label"]) - 1,
    )


def boolq(row: Row) -> Example:
    if not isinstance(row["answer"], bool):
        raise TypeError(f"answer must be true or false, got {row['answer']!r}")
    return _example(
        f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
        ["yes", "no"],
        0 if row["answer"] else 1,
    )


def copa(row: Row) -> Example:
    """The premise's final period becomes the connective; the choices continue the sentence."""
    connective = {"cause": "because", "effect": "therefore"}[row["question"]]
    choices = [text[0].lower() + text[1:] for text in (row["choice1"], row["choice2"])]
    return _example(f"{row['premise'].strip()[:-1]} {connective}", choices, row["label"])


def winogrande(row: Row) -> Example:
    """Partial scoring: each option fills the blank in its own context, and the text after the
    blank is scored under each, so the choices differ only in what the model conditions on."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + row[key] for key in ("option1", "option2"))
    gold = int(row["answer"]) - 1
    if gold not in (0, 1):
        raise ValueError(f"answer must be 1 or 2, got {row['answer']!r}")
    return Example(contexts, (" " + sentence[blank + 1 :].strip(),), gold)


def mmlu(row: Row) -> Example:
    return _example(f"Question: {row['question']}\nAnswer:", list(row["choices"]), row["answer"])


Formatter = Callable[[Row], Example]
