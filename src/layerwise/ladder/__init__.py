"""Ladders: every profile at several sizes and token budgets, and what a scaling law fitted to
them says about the gain at sizes nobody trained.

The fitting half is torch- and scipy-free at import: a table of runs (`table`), the law and its
per-profile and joint fits (`law`), the paired bootstrap and the held-out rung (`bootstrap`),
the model-light paired check (`checks`), the answer against the reference (`answer`), all of it
together (`fit`), and the report with its figures (`report`, `figures`). scipy is imported inside
the functions that optimise, from the `ladder` extra.
"""
