"""Small torch-free helpers with no knowledge of models or runs: user errors, atomic files,
statistics, units, plotting and report rendering. Imports nothing else of layerwise."""
