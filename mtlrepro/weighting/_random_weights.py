"""The five weight distributions of Random Weighting (RW paper, Sec. 5.4 and Appendix B).

Each sampler draws ``lambda~`` from ``p(lambda~)`` and maps it onto the simplex
with the normalisation ``f`` the paper pairs with it:

=============  ==============================  ==========================
name           p(lambda~)                      f
=============  ==============================  ==========================
normal         N(0, 1) i.i.d.                  softmax (paper's default)
uniform        U(0, 1) i.i.d.                  softmax
dirichlet      Dirichlet(alpha = 1)            identity
bernoulli      Bernoulli(1/2) i.i.d.           lambda~ / sum(lambda~)
c_bernoulli    Bernoulli(1/2), sum = 1         lambda~ / sum(lambda~)
=============  ==============================  ==========================

For every distribution ``E[lambda] = (1/T, ..., 1/T)`` (Appendix B). Two
details the paper leaves open, resolved here and documented:

* ``bernoulli`` can draw all zeros, for which ``f`` is undefined; we sample from
  Bernoulli(1/2)^T conditioned on at least one 1, i.e. a uniformly random
  non-empty subset of tasks (the bits of an integer uniform on [1, 2^T - 1]),
  which needs no host round trip. The conditioning is symmetric in the tasks,
  so the mean stays ``1/T``.
* ``c_bernoulli`` ("Bernoulli with the constraint sum = 1") is a one-hot vector
  whose hot task is uniform over the T tasks: exactly one task per step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Distribution = Literal["normal", "uniform", "dirichlet", "bernoulli", "c_bernoulli"]
DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "dirichlet", "bernoulli", "c_bernoulli")


def sample_weights(
    distribution: str,
    n_tasks: int,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one weight vector [T] on the simplex from ``distribution`` (see module table).

    ``generator`` must live on ``device`` (default: the generator's device), so
    sampling never leaves the model's device.
    """
    device = generator.device if device is None else torch.device(device)
    shape = (n_tasks,)
    if distribution == "normal":
        return torch.softmax(torch.randn(shape, generator=generator, dtype=dtype, device=device), dim=-1)
    if distribution == "uniform":
        return torch.softmax(torch.rand(shape, generator=generator, dtype=dtype, device=device), dim=-1)
    if distribution == "dirichlet":
        # Dirichlet(1) = normalised i.i.d. Exponential(1) draws: -log(U), U ~ U(0, 1].
        uniform = 1.0 - torch.rand(shape, generator=generator, dtype=dtype, device=device)
        exponential = -torch.log(uniform)
        return exponential / exponential.sum()
    if distribution == "bernoulli":
        return _nonempty_bernoulli(n_tasks, generator, dtype, device)
    if distribution == "c_bernoulli":
        hot = torch.randint(n_tasks, (1,), generator=generator, device=device)
        return torch.zeros(shape, dtype=dtype, device=device).scatter_(0, hot, 1.0)
    raise ValueError(f"unknown distribution {distribution!r} (known: {', '.join(DISTRIBUTIONS)})")


def _nonempty_bernoulli(n_tasks: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Bernoulli(1/2)^T conditioned on a non-zero draw, normalised to sum to 1."""
    if n_tasks <= 62:
        code = torch.randint(1, 2**n_tasks, (1,), generator=generator, device=device)
        bits = (code >> torch.arange(n_tasks, device=device)) & 1
        draw = bits.to(dtype)
    else:  # too many tasks for one int64: reject all-zero draws (probability 2^-T)
        while True:
            draw = (torch.rand((n_tasks,), generator=generator, device=device) < 0.5).to(dtype)
            if bool(draw.sum() > 0):
                break
    return draw / draw.sum()
