"""Comparisons: the grid of cells (`cells`), running it (`run`), reading the runs back
(`results`), the report with paired intervals (`report`, `figures`) and the built-in demo
(`demo`). Everything but `run` and `demo` is torch-free."""
