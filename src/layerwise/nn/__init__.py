"""The model: the OLMo2 block with per-layer widths (`model`), the chunked LM-head loss
(`losses`), precision (`precision`) and the mapping to Hugging Face Olmo2 names
(`state_dict_adapter`). Knows nothing of training or parallelism."""
