"""Learned shapes: each layer's width learned by gradient in one run of a gated supernet."""
