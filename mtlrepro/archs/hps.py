"""Hard parameter sharing (HPS): one shared encoder, one head per task (RW paper, Sec. 5.1).

The shared parameters theta are the encoder's; task t's parameters psi_t are
its head's. The model exposes the representation z = encoder(x) separately so
that the step can differentiate each task loss with respect to theta or z on
its own, and lets each head read its own copy of z (``decode_each``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class HPS(nn.Module):
    """Shared ``encoder`` followed by one head per task (``mtlrepro.models.heads``: linear, per token, or dense)."""

    #: every head reads the one tensor z, so representation-gradient methods apply
    has_shared_representation = True

    def __init__(self, encoder: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)

    def encode(self, x: Tensor) -> Tensor:
        """The shared representation z."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> list[Tensor]:
        """Each task head applied to z."""
        return [head(z) for head in self.heads]

    def decode_each(self, zs: Sequence[Tensor]) -> list[Tensor]:
        """Head t applied to ``zs[t]`` (a copy of z, possibly transformed for task t)."""
        return [head(z) for head, z in zip(self.heads, zs, strict=True)]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.decode(self.encode(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        """theta: the parameters every task's loss depends on."""
        return list(self.encoder.parameters())

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """W: the parameters of the encoder's last layer (GradNorm's choice, Chen et al. 2018, Sec. 3)."""
        return list(self.encoder.last_layer().parameters())

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """psi_t: the parameters only task ``task``'s loss depends on."""
        return list(self.heads[task].parameters())
