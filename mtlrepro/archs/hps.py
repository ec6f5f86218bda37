"""Hard parameter sharing (HPS): one shared encoder, one head per task (RW paper, Sec. 5.1).

The shared parameters theta are the encoder's; task t's parameters psi_t are
its head's. The model exposes the representation z = encoder(x) separately so
that the training loop can differentiate each task loss with respect to theta
(or z) on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class HPS(nn.Module):
    """Shared ``encoder`` followed by one linear head per task."""

    def __init__(self, encoder: nn.Module, rep_dim: int, out_dims: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(nn.Linear(rep_dim, out) for out in out_dims)

    def encode(self, x: Tensor) -> Tensor:
        """The shared representation z."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> list[Tensor]:
        """Each task head applied to z."""
        return [head(z) for head in self.heads]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.decode(self.encode(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        """theta: the parameters every task's loss depends on."""
        return list(self.encoder.parameters())

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """psi_t: the parameters only task ``task``'s loss depends on."""
        return list(self.heads[task].parameters())
