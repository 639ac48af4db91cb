"""From text to training windows: which inputs are read (`inputs`, `readers`), tokenizers
(`tokenizer`), `data prepare` (`prepare`), what a data directory holds (`meta`), and the
deterministic, resumable window loader the trainer reads (`loader`, the only module here that
needs torch)."""
