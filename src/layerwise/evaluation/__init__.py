"""Downstream evaluation: multiple-choice tasks scored by rank classification.

One job per module: `formats` (rows to context and continuations), `tasks` (names, files,
reading), `requests` (tokenizing), `scoring` (batched log-probabilities, torch), `metrics`
(accuracy, length-normalised accuracy, bits per byte), `evaluator` (a run or a model on a set
of tasks), `callback` (in-loop scores), `report` (the comparison's downstream section, no
torch). Import from those modules; this package imports nothing so the torch-free ones stay
torch-free.
"""
