"""RETRO (Borgeaud et al. 2021): chunked cross-attention model, neighbour database, leakage-filtered eval."""
