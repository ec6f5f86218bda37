"""UW: Uncertainty Weighting (Kendall, Gal and Cipolla, CVPR 2018, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", Sec. 3.2, Eq. 7-10).

Each task t has a learned homoscedastic noise scale sigma_t, parametrised by its log variance
``s_t = log sigma_t^2`` (the paper's parametrisation, Sec. 3.2, for numerical stability), and the model
minimises the joint negative log likelihood

* ``form: generic`` (default): ``sum_t 1/(2 sigma_t^2) L_t + log sigma_t = sum_t 1/2 e^{-s_t} L_t + 1/2 s_t``,
  Kendall's Gaussian-likelihood term (Eq. 7) applied to every task whatever its loss. This is the form of
  LibMTL (``UW.py``, for every loss type, LibMTL issue #40), of MTAN's code, of Nash-MTL
  (``1/2 (e^{-s} L + s)``) and of torchjd's ``UW`` scalarizer. Loss weights ``lambda_t = 1 / (2 e^{s_t})``.
* ``form: classification``: Kendall's classification term of Eq. 10, ``1/sigma_t^2 L_t + log sigma_t =
  e^{-s_t} L_t + 1/2 s_t``, for every task (i.e. every task treated as a classification task; the contract
  does not tell a method the loss type of each task, so Eq. 10's per-type mix is not expressible). Loss
  weights ``lambda_t = e^{-s_t}``. Both forms have the same stationary weight in s, ``1 / (2 L_t)``; they
  differ in the gradient that drives s.

The weights multiply the task losses for the shared parameters *and* the heads (``heads: weighted``), with no
normalisation (``scale: free``): the total is exactly the likelihood above, up to the regulariser in s,
which reaches s only through :attr:`~mtlrepro.weighting.base.LossWeights.method_loss`
``sum_t lambda_t(s) L_t.detach() + 1/2 s_t`` (its gradient in s equals that of the joint objective).

Defaults and known differences, all options:

* ``init`` (initial s): Kendall's paper gives none (torchjd's documentation says the paper reports robustness
  to it; not verified here). LibMTL and MTAN initialise s = -0.5 (``LibMTL/weighting/UW.py``,
  ``mtan/im2im_pred/model_segnet_mtan.py``); Nash-MTL and torchjd use 0. Default -0.5: the RW paper's UW
  baseline ran LibMTL's UW (the ExcessMTL paper does not compare with UW).
* ``lr`` (learning rate of s, its own optimizer parameter group, no weight decay): Kendall gives none;
  LibMTL trains s inside the model optimizer (model learning rate *and* model weight decay); Nash-MTL uses a
  separate 0.025 (``--method-params-lr``), our default. The contract cannot express "same as the model", so
  LibMTL's coupling is reproduced only by setting ``lr`` to the run's learning rate (its weight decay on s is
  not reproduced).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, WeightScale

Form = Literal["generic", "classification"]


@dataclass(frozen=True)
class UWOptions(LossOptions):
    """Kendall et al. 2018, s = log sigma^2; defaults: generic form, s = -0.5 (LibMTL, MTAN), lr 0.025 (Nash-MTL)."""

    scale: WeightScale = "free"
    form: Form = "generic"
    init: float = -0.5
    lr: float = 0.025

    def __post_init__(self) -> None:
        if self.lr < 0:
            raise ValueError(f"lr must be non-negative, got {self.lr}")


def uncertainty_weights(log_var: Tensor, form: str) -> Tensor:
    """Loss weights from log variances s [T]: ``1/(2 e^s)`` (generic, Eq. 7) or ``e^{-s}`` (classification, Eq. 10)."""
    precision = torch.exp(-log_var)
    return 0.5 * precision if form == "generic" else precision


def uncertainty_objective(losses: Tensor, log_var: Tensor, form: str) -> Tensor:
    """Kendall's joint objective ``sum_t w_t(s) L_t + 1/2 s_t`` (``log sigma_t = s_t / 2``), scalar."""
    return (uncertainty_weights(log_var, form) * losses + 0.5 * log_var).sum()


class UW(LossWeighting):
    """Loss weights from learned task uncertainties; s is trained by the method loss (Kendall et al. 2018)."""

    name = "uw"
    Options = UWOptions
    lr_option = "lr"

    def __init__(self, n_tasks: int, options: UWOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.log_var = nn.Parameter(torch.full((n_tasks,), float(options.init)))

    def weigh(self, ctx) -> LossWeights:
        losses = ctx.losses
        log_var = self.log_var
        weights = uncertainty_weights(log_var, self.options.form)
        # the model sees the weights as constants; s sees the losses as constants
        method_loss = uncertainty_objective(losses.detach().to(log_var.dtype), log_var, self.options.form)
        return LossWeights(weights.detach().to(losses.dtype), method_loss)

    def diagnostics(self) -> dict[str, Tensor]:
        """The log variances s [T] (sigma_t^2 = e^{s_t})."""
        return {"log_var": self.log_var.detach()}
