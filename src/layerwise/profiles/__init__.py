"""Layer-wise scaling profiles: recipes (`recipes`), the per-layer widths they resolve to and
what those cost (`shape`), the budget solver (`budget`) and the allocation figure (`plot`).
Torch-free: everything here is arithmetic on widths."""
