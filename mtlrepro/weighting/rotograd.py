"""RotoGrad: gradient homogenisation by per-task rotations of the shared representation.

Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask Learning",
ICLR 2022 (arXiv 2103.02631; the paper text is not in shared/papers, so its
parts are named, not numbered). Head t reads ``r_t = R_t z`` with a learned
rotation ``R_t in SO(d)``; z is the shared representation of one example, a
flat vector (``SetupInfo.rep_shape == (d,)``; the reference code's
``rotation_shape``/``post_shape`` for convolutional features is not
implemented and refused). With ``G_k`` [B x d] the gradient of task k's loss
w.r.t. z (the step's leaves, i.e. already rotated back: ``g = R_k^T g~`` with
``g~`` the gradient w.r.t. ``r_k``) and ``||.||`` the Frobenius norm over the
batch:

* *magnitude* (paper, gradient-magnitude homogenisation): the backbone
  receives ``C sum_k U_k`` with ``U_k = G_k / ||G_k||``,
  ``alpha_k = (||G_k|| / ||G_k^0||) / sum_i (||G_i|| / ||G_i^0||)`` and
  ``C = sum_k alpha_k ||G_k||``: every task contributes the same magnitude C,
  set mostly by the tasks that converged least relative to their initial
  gradient ``G_k^0``. So the direction is the weighted sum ``w^T G`` with
  ``w_k = C / ||G_k||`` (returned as the step's weights, scale ``free``).
  ``G_k^0`` is recorded at the first step and again after ``burn_in`` steps
  (reference code, ``burn_in_period = 20``).
* *direction* (paper, gradient-direction homogenisation, Algorithm 1): the rotations
  minimise ``L_rot = -sum_k sum_n <R_k^T g~_{n,k}, v_n>`` with the target
  ``v_n = (1/T) sum_k u_{n,k}`` (rows of the norm-equalised mean ``V = mean_k
  U_k``), the gradients ``g~`` held fixed (``rotation_loss: paper``). The
  reference code minimises ``mean_n ||R_k m_n - g~_{n,k}||^2`` with ``m = ||mean_k
  G_k|| V`` (``rotation_loss: code``): on SO(d) ``||R m||`` is constant, so both
  have the same Riemannian gradient direction up to the positive factor
  ``2 ||mean_k G_k|| / B``; with Adam (the reference's rotation optimizer) the
  two are nearly the same, with SGD they differ in effective learning rate.
  The loss reaches the rotations only (``method_loss``, own parameter group,
  option ``lr``, which the paper requires to be smaller than the network's:
  the rotations are the leader of a Stackelberg game, ``eta_rot = o(eta)``).

Parametrisation: ``R_k = B_k exp(S_k - S_k^T)`` (``parametrization: expm``, as
the reference code's ``geotorch.orthogonal(triv="expm")``) or the Cayley map
``B_k (I - A_k)^{-1} (I + A_k)``, ``A_k = S_k - S_k^T`` (``cayley``); both
stay exactly orthogonal with det +1 whatever S is. ``S`` starts at 0 and the
base ``B_k`` is fixed: the identity (``init: identity``) or a Haar-random
rotation of SO(d) drawn from the method's generator (``init: random``: the
reference code lets geotorch sample a uniform orthogonal matrix at
construction; the paper's initialisation: not found). The base is kept in
double precision so that R is orthogonal to the precision of the run.

Heads read ``z R_t^T`` with the rotation *detached* (:meth:`head_inputs`): the
heads' gradients never reach the rotations, whose only signal is the rotation
loss. Each head gets its own unweighted gradient (``heads: unweighted``, as the
reference code); ``heads: weighted`` scales head t by ``w_t``.

``normalize_losses`` (reference code, default False): divide each task loss by
its value at the first step (and again after ``burn_in`` steps) before
differentiating. Here it divides the per-task representation gradients
(backbone direction and rotation loss). The reference code also back-propagates
the normalised losses into the heads; the step cannot scale the heads by a
factor other than the returned weights, so the heads keep the raw gradient
(a contract change is requested in the report).

Defaults: ``burn_in`` 20 and ``normalize_losses`` False (reference code
``RotoGrad.__init__``), ``rotation_loss: paper``, ``parametrization: expm`` and
``init: random`` (reference code), ``lr`` 1e-3 (our choice below the model's:
the value used in the paper's experiments was not found; the reference README
only advises "a smaller learning rate" and trains the rotations with a separate
Adam, whereas the loop here uses the run's optimizer type for every group).

At inference the heads must read the rotated representation too: the training
loop's evaluation has to go through :meth:`head_inputs`, and so does a
combination's functional forward (``StepContext.forward_losses``); both are
contract changes requested in the report.

State: rotation parameters S (nn.Parameter, T x d x d), the bases, the initial
gradient norms and losses (buffers) and the step counter (extra state).
Everything runs on the device of the inputs; the step counter is a Python int
so the burn-in reset needs no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlrepro.errors import ConfigError
from mtlrepro.weighting.base import Aggregation, GradientAggregator, GradientOptions, Need, SetupInfo

_EPS = 1e-15  # the reference code's floor for norms and ratios


@dataclass(frozen=True)
class RotoGradOptions(GradientOptions):
    """RotoGrad (Javaloy & Valera 2022) with the reference code's burn-in (20) and no loss normalisation."""

    grad_wrt: Literal["params", "representation"] = "representation"
    lr: float = 1e-3
    burn_in: int = 20
    normalize_losses: bool = False
    rotation_loss: Literal["paper", "code"] = "paper"
    parametrization: Literal["expm", "cayley"] = "expm"
    init: Literal["random", "identity"] = "random"

    def __post_init__(self) -> None:
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")
        if self.lr < 0.0:
            raise ValueError(f"lr must be non-negative, got {self.lr}")


# --------------------------------------------------------------------------- the maths


def skew_to_rotation(params: Tensor, parametrization: str = "expm") -> Tensor:
    """Map unconstrained ``S`` [..., d, d] to ``SO(d)`` through ``A = S - S^T``: ``exp(A)`` or Cayley."""
    a = params - params.transpose(-1, -2)
    if parametrization == "expm":
        return torch.linalg.matrix_exp(a)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    return torch.linalg.solve_ex(eye - a, eye + a)[0]  # I - A is invertible for skew A: no error check (sync)


def haar_rotations(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` Haar-distributed rotations of SO(dim): QR of a Gaussian matrix with sign fix (Mezzadri 2007).

    A last-column flip where ``det = -1`` maps the Haar measure of O(d) onto SO(d).
    """
    gaussian = torch.randn(n, dim, dim, generator=generator, dtype=dtype, device=generator.device)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    flip = torch.ones(n, dim, dtype=dtype, device=q.device)
    flip[:, -1] = torch.sign(torch.linalg.det(q))
    return q * flip.unsqueeze(-2)


def magnitude_weights(norms: Tensor, initial_norms: Tensor) -> tuple[Tensor, Tensor]:
    """RotoGrad's magnitude homogenisation: weights ``w_k = C / ||G_k||`` [T] and the shares ``alpha_k`` [T].

    ``alpha_k = (||G_k|| / ||G_k^0||) / sum_i (||G_i|| / ||G_i^0||)``, ``C = sum_k alpha_k ||G_k||``.
    """
    ratios = norms / initial_norms.clamp_min(_EPS)
    alpha = ratios / ratios.sum().clamp_min(_EPS)
    common = (alpha * norms).sum()
    return common / norms.clamp_min(_EPS), alpha


def alignment_target(grads: Tensor) -> Tensor:
    """``V = mean_k G_k / ||G_k||`` [B x d] for per-task representation gradients ``grads`` [T x B x d]."""
    norms = grads.flatten(1).norm(dim=1).clamp_min(_EPS)
    return (grads / norms[:, None, None]).mean(dim=0)


def rotation_loss(grads: Tensor, rotations: Tensor, mode: str = "paper") -> Tensor:
    """The loss that aligns every task's gradient with the target, differentiable in ``rotations`` only.

    ``grads`` [T x B x d]: per-task gradients w.r.t. z (rows ``g = R^T g~``,
    fixed); ``rotations`` [T x d x d]: R_k (attached). ``paper``:
    ``-sum_k sum_n <R_k^T g~_{n,k}, v_n>``; ``code``: ``sum_k mean_n ||R_k m_n -
    g~_{n,k}||^2`` with ``m = ||mean_k G_k|| V``.
    """
    grads = grads.detach()
    target = alignment_target(grads)
    fixed = rotations.detach().to(grads.dtype)
    rotated = grads @ fixed.transpose(-1, -2)  # g~ = R g, as rows: g R^T
    r = rotations.to(grads.dtype)
    if mode == "paper":
        return -((rotated @ r) * target).sum()  # R^T g~ as rows: g~ R
    m = grads.mean(dim=0).norm() * target
    diff = m @ r.transpose(-1, -2) - rotated  # R m - g~, as rows
    return diff.pow(2).sum(dim=-1).mean(dim=-1).sum()


def alignment(grads: Tensor) -> Tensor:
    """Cosine [T] between each task's gradient ``G_k`` and the target ``V`` (1: all tasks aligned)."""
    target = alignment_target(grads)
    flat = grads.flatten(1)
    return (flat @ target.reshape(-1)) / (flat.norm(dim=1) * target.norm()).clamp_min(_EPS)


# --------------------------------------------------------------------------- the method


class RotoGrad(GradientAggregator):
    """Rotated heads, norm-homogenised backbone gradient, rotations trained to align task gradients."""

    name = "rotograd"
    Options = RotoGradOptions
    needs = frozenset({Need.JACOBIAN, Need.REPRESENTATION})
    lr_option = "lr"
    representation_only = True

    def __init__(self, n_tasks: int, options: RotoGradOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.dim: int | None = None
        self._step = 0
        self._pending: tuple[int, Tensor] | None = None
        self._diagnostics: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ lifecycle
    def setup(self, info: SetupInfo) -> None:
        shape = info.rep_shape
        if shape is None or len(shape) != 1:
            raise ConfigError(
                f"rotograd: the shared representation must be a flat vector to be rotated, got shape {shape} "
                "(rotating the channels of convolutional features is not implemented)"
            )
        d = int(shape[0])
        n = self.n_tasks
        self.dim = d
        self.skew = nn.Parameter(torch.zeros(n, d, d, device=info.device))
        if self.options.init == "random":  # drawn in double so that it is orthogonal to double precision
            base = haar_rotations(n, d, self.generator, torch.float64).to(info.device)
        else:
            base = torch.eye(d, dtype=torch.float64, device=info.device).expand(n, d, d).clone()
        self.register_buffer("base", base)
        self.register_buffer("initial_norms", torch.ones(n, device=info.device))
        self.register_buffer("initial_losses", torch.ones(n, device=info.device))
        self._step = 0
        self._pending = None

    def rotations(self) -> Tensor:
        """The current rotations R [T x d x d], attached to the parameters."""
        if self.dim is None:
            raise RuntimeError("rotograd: setup() must run before the first step")
        turn = skew_to_rotation(self.skew, self.options.parametrization)
        return self.base.to(turn.dtype) @ turn

    # ------------------------------------------------------------------ the step
    def head_inputs(self, zs: Sequence[Tensor]) -> list[Tensor]:
        """Head t reads ``z R_t^T`` (rows: ``r = R_t z``), the rotation detached on this path."""
        rotations = self.rotations()
        if torch.is_grad_enabled():  # kept for the rotation loss of this step
            self._pending = (self.skew._version, rotations)
        fixed = rotations.detach()
        out = []
        for t, z in enumerate(zs):
            if z.dim() != 2 or z.shape[-1] != self.dim:
                raise ValueError(f"rotograd: head input {t} has shape {tuple(z.shape)}, expected [B x {self.dim}]")
            out.append(z @ fixed[t].to(z.dtype).T)
        return out

    def _current_rotations(self) -> Tensor:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == self.skew._version:
            return pending[1]
        return self.rotations()

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        n, d = self.n_tasks, self.dim
        if d is None:
            raise RuntimeError("rotograd: setup() must run before the first step")
        rows = grads.detach()
        per_task = rows.reshape(n, -1, d)
        reset = self._step == 0 or self._step == self.options.burn_in
        if self.options.normalize_losses:
            values = ctx.losses.detach()
            if ctx.loss_weights is not None:
                values = values * ctx.loss_weights
            if reset:
                self.initial_losses.copy_(values)
            per_task = per_task / self.initial_losses.to(rows.dtype)[:, None, None]
        norms = per_task.flatten(1).norm(dim=1).clamp_min(_EPS)
        if reset:
            self.initial_norms.copy_(norms)
        weights, shares = magnitude_weights(norms, self.initial_norms.to(norms.dtype))
        if self.options.normalize_losses:  # weights w.r.t. the rows as given
            weights = weights / self.initial_losses.to(rows.dtype)
        direction = weights @ rows
        loss = rotation_loss(per_task, self._current_rotations(), self.options.rotation_loss)
        self._step += 1
        self._diagnostics = {"alpha": shares.detach(), "alignment": alignment(per_task).detach()}
        return Aggregation(direction=direction, weights=weights, method_loss=loss)

    def diagnostics(self) -> dict[str, Tensor]:
        """Per task: the share alpha_k of the common magnitude and the cosine of G_k with the target V."""
        return dict(self._diagnostics)

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {"step": self._step}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        self._pending = None
