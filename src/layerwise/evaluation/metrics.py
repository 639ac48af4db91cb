"""Task scores from the log-probabilities of each example's choices.

Three views of the same numbers, as OLMo and OLMES report them:
- accuracy: the choice with the highest summed log-probability;
- length-normalised accuracy: highest log-probability per character of the continuation, which
  stops long choices losing merely for being long;
- bits per byte of the gold continuation: a smooth score that moves before accuracy does.

A choice only counts as correct when it beats every other strictly: a model that gives two
choices the same score (an untrained one, or duplicated choices) is not credited with the gold.
Chance (1 / number of choices, averaged) and the majority class sit beside each score, since
some tasks are not balanced (BoolQ is 62% "yes"). The majority class is the most frequent gold
answer text, not position: rank classification scores each choice on its own, so a model can
favour an answer (" yes") but never a position (SciQ's gold is always last).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from layerwise.evaluation.formats import Example

RECORD_TYPE = "downstream"
"""The `type` of downstream records in metrics.jsonl."""


@dataclass(frozen=True)
class TaskResult:
    """One task's scores; `to_dict` is the JSON the CLI, metrics.jsonl and summary.json hold."""

    n: int
    primary: str
    acc: float
    len_norm: float
    bpb: float
    chance: float
    majority: float

    @property
    def value(self) -> float:
        """The primary metric's value."""
        return self.acc if self.primary == "acc" else self.len_norm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def strictly_best(scores: Sequence[float], gold: int) -> bool:
    """Whether the gold choice scores above every other choice (ties lose)."""
    return all(score < scores[gold] for i, score in enumerate(scores) if i != gold)


def gold_answer(example: Example) -> str:
    """The text that tells the gold choice from the others: its continuation, or for partial
    scoring (one shared continuation) its context."""
    context, continuation = example.choice(example.gold)
    return continuation if len(example.continuations) > 1 else context


def task_result(
    examples: Sequence[Example], logprobs: Sequence[Sequence[float]], primary: str
) -> TaskResult:
    """Scores of `examples` given each choice's summed log-probability (natural log)."""
    correct = correct_norm = 0
    gold_nats = 0.0
    gold_bytes = 0
    for example, scores in zip(examples, logprobs, strict=True):
        lengths = [len(example.choice(i)[1]) for i in range(example.n_choices)]
        correct += strictly_best(scores, example.gold)
        correct_norm += strictly_best(
            [s / n for s, n in zip(scores, lengths, strict=True)], example.gold
        )
        gold_nats -= scores[example.gold]
        gold_bytes += len(example.choice(example.gold)[1].encode("utf-8"))
    n = len(examples)
    answers = Counter(gold_answer(example) for example in examples)
    return TaskResult(
        n=n,
        primary=primary,
        acc=correct / n,
        len_norm=correct_norm / n,
        bpb=gold_nats / math.log(2) / gold_bytes,
        chance=sum(1 / example.n_choices for example in examples) / n,
        majority=max(answers.values()) / n,
    )
