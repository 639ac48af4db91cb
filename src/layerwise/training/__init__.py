"""Training one run: the model a config describes (`build`), the loop and its events
(`trainer`, `step`, `callbacks/`), optimizer and schedules (`optim`), checkpoints (`checkpoint`),
what a run directory allows (`resume`), metrics (`metrics`), reading a run back (`load`) and the
memory and time planner (`plan`). Never imports evaluation, analysis, hf, compare or search:
they build on it."""
