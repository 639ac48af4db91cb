"""Linear CKA between layers, with the unbiased minibatch estimator of Nguyen et al. (2021).

CKA over all tokens would need every layer's [tokens x tokens] Gram matrix at once. Instead each
batch contributes the unbiased HSIC estimate (Song et al. 2012) of a fixed-size token sample,
and CKA is the mean cross-HSIC over batches divided by the geometric mean of the mean
self-HSICs. Memory is one batch's Gram matrices whatever the number of windows, and the
estimate does not shrink with the sample size the way biased CKA does. The linear kernel is
used without centring the features: the U-statistic cancels any constant offset, so CKA is
invariant to translation as well as to orthogonal transforms and isotropic scaling.

Gram matrices are float64: HSIC subtracts large, nearly equal terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grams:
    """The zero-diagonal linear Gram matrices of L layers on the same n tokens."""

    flat: torch.Tensor
    """[L, n * n]"""
    row_sums: torch.Tensor
    """[L, n]"""
    n: int

    @classmethod
    def of(cls, features: list[torch.Tensor]) -> Grams:
        """From per-layer features [n, d_l] (widths may differ) of the same n tokens."""
        n = features[0].shape[0]
        if n < 4:
            raise ValueError(f"the unbiased HSIC estimator needs at least 4 tokens, got {n}")
        grams = []
        for x in features:
            x = x.double()
            gram = x @ x.T
            gram.fill_diagonal_(0)
            grams.append(gram)
        stacked = torch.stack(grams)
        return cls(stacked.flatten(1), stacked.sum(2), n)


def hsic(a: Grams, b: Grams) -> torch.Tensor:
    """Unbiased HSIC of every layer of `a` with every layer of `b`: [La, Lb].

    (tr(K L) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'K L1) / (n(n-3)) with zero-diagonal K, L;
    tr(K L) is the Frobenius product since Gram matrices are symmetric.
    """
    if a.n != b.n:
        raise ValueError(f"HSIC needs the same tokens on both sides, got {a.n} and {b.n}")
    n = a.n
    trace = a.flat @ b.flat.T
    totals = torch.outer(a.row_sums.sum(1), b.row_sums.sum(1)) / ((n - 1) * (n - 2))
    cross = a.row_sums @ b.row_sums.T * (2 / (n - 2))
    return (trace + totals - cross) / (n * (n - 3))


class MinibatchCKA:
    """Accumulates HSIC between the layers of two representations over batches of tokens."""

    def __init__(self) -> None:
        self.cross: torch.Tensor | None = None
        self.self_a: torch.Tensor | None = None
        self.self_b: torch.Tensor | None = None
        self.batches = 0

    def update(self, a: Grams, b: Grams | None = None) -> None:
        """Add one batch; `b` None compares `a`'s layers with each other."""
        cross = hsic(a, a if b is None else b)
        self_a = torch.diagonal(cross) if b is None else torch.diagonal(hsic(a, a))
        self_b = self_a if b is None else torch.diagonal(hsic(b, b))
        if self.cross is None or self.self_a is None or self.self_b is None:
            self.cross, self.self_a, self.self_b = cross.clone(), self_a.clone(), self_b.clone()
        else:
            self.cross += cross
            self.self_a += self_a
            self.self_b += self_b
        self.batches += 1

    def result(self) -> list[list[float]]:
        """CKA [La x Lb] from the means over batches (the batch count cancels)."""
        if self.cross is None or self.self_a is None or self.self_b is None:
            raise ValueError("no batches were added")
        scale = torch.sqrt(torch.outer(self.self_a, self.self_b))
        return (self.cross / scale).tolist()


def sample_tokens(batch: int, seq: int, n: int, seed: int) -> torch.Tensor:
    """Indices of `n` of the [batch * (seq - 1)] tokens left after position 0, in random order,
    the same for every run that sees a batch of this shape so runs are compared on the same
    tokens."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(batch * (seq - 1), generator=generator)[:n]
