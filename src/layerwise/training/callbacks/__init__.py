"""The trainer's callbacks, one per file: the `Callback` base and the surface it sees (`base`),
and the built-ins every run has."""
