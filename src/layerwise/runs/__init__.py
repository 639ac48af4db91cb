"""Run directories as files: what a run writes (`files`: config, summary, metrics log) and
listing, reading and plotting runs (`listing`). Torch-free, so reports and `layerwise runs`
start fast."""
