"""Automatic profile search (`layerwise search`): Optuna over per-layer width profiles.

Modules, one job each: `interp` (PCHIP / linear interpolation), `space` (the search space and
how a point becomes per-layer multipliers), `plan` (trial configs, rungs, budget, input
checks), `study` (storage, sampler, pruner, first trials), `objective` (one trial), `run`
(the loop), `report` (trials.csv, report.md, figures), `fidelity` (`--check-fidelity`),
`confirm` (`--confirm`). Everything but `interp`, `space` and `plan` needs the `search` extra
(Optuna); `import layerwise` imports none of it.
"""
