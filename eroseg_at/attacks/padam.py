"""PAdam: projected Adam (AMSGrad) on the perturbation, over cross-entropy or the cosine distance to the label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from eroseg_at.attacks.arguments import choice, number
from eroseg_at.attacks.base import Attack, BestIterate
from eroseg_at.attacks.objectives import normalized_label_logit, pixel_cross_entropy, valid_mean

# Adam's constants, torch's defaults as Halmosi et al. use them (torch.optim.Adam with only lr, amsgrad and
# maximize set).
BETA1 = 0.9
BETA2 = 0.999
ADAM_EPSILON = 1e-8


def padam_cosine_distance(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """``1 − cos(f, onehot(y)) = 1 − f_y/‖f‖₂`` of each pixel, on the logits (0 at invalid pixels).

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    return (1 - normalized_label_logit(logits, labels, valid)).masked_fill(~valid, 0.0)


# Per-image losses to ascend: ce = mean CE; cos = mean cosine distance between the logits and onehot(y).
PADAM_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "ce": lambda logits, labels, valid: valid_mean(pixel_cross_entropy(logits, labels, valid), valid),
    "cos": lambda logits, labels, valid: valid_mean(padam_cosine_distance(logits, labels, valid), valid),
}


class PAdam(Attack):
    """PAdam: Adam with AMSGrad ascends the loss on the input, projected onto the ball after every step.

    From the (random) start ``x_0``, gradient evaluation t = 1..T at ``x_{t−1}`` gives ``g_t = ∇L(x_{t−1})`` and
    ``m_t = β1 m_{t−1} + (1 − β1) g_t``, ``v_t = β2 v_{t−1} + (1 − β2) g_t²``, ``v̂_t = max(v̂_{t−1}, v_t)``,
    ``x_t = Π(x_{t−1} + lr · (m_t/(1 − β1^t)) / (√(v̂_t/(1 − β2^t)) + 1e-8))`` elementwise (β1 = 0.9,
    β2 = 0.999); the Adam state is not touched by the projection. Per-element step normalisation, not a sign:
    an element whose gradient stays small moves little. Returns, per image, the evaluated iterate (the start,
    the ``steps − 1`` later ones that get a gradient, and the last one, evaluated without) with the fewest
    correctly classified valid pixels (ties keep the earlier one): ``steps`` gradient evaluations and one
    gradient-free forward pass.

    Losses (``loss``), per image over valid pixels V: ``ce`` = ``1/|V| Σ CE``; ``cos`` =
    ``1/|V| Σ (1 − f_y/‖f‖₂)``, the cosine distance between the logit vector and ``onehot(y)``.

    Args:
        loss: ``ce`` (default) or ``cos``.
        lr: Adam's learning rate in pixel units, a number or a string such as ``"2/255"`` (default).
        steps: Gradient evaluations, default 200 (the paper's).
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.Attack` (eps, norm, random_start,
            ignore_index, seed).

    Reference:
        Halmosi, Mohos, Jelasity, "Evaluating the Adversarial Robustness of Semantic Segmentation: Trying Harder
        Pays Off", ECCV 2024 (code: szegedai/Robust-Segmentation-Evaluation); Reddi, Kale, Kumar, "On the
        Convergence of Adam and Beyond", ICLR 2018 (AMSGrad).
    """

    name = "padam"

    def __init__(self, loss: str = "ce", lr: float | str = "2/255", steps: int = 200, **kwargs: Any) -> None:
        super().__init__(steps=steps, **kwargs)
        self.loss = choice(loss, "loss", sorted(PADAM_LOSSES))
        self.lr = number(lr, "lr", minimum=0, exclusive_minimum=True)

    def _perturb(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        loss_function = PADAM_LOSSES[self.loss]
        ball = self._ball(clean)
        x = self._start(clean)
        first_moment = torch.zeros_like(x)
        second_moment = torch.zeros_like(x)
        largest_second_moment = torch.zeros_like(x)
        best = None
        for step in range(1, self.steps + 1):
            x.requires_grad_(True)
            logits, _ = self._forward(model, x, clean, model_dtype)
            with torch.autocast(device_type=x.device.type, enabled=False):
                loss = loss_function(logits, labels, valid)
            (gradient,) = torch.autograd.grad(loss.sum(), x)
            with torch.no_grad():
                x = x.detach()
                error = self._pixel_error(logits, labels, valid)
                if best is None:
                    best = BestIterate(x, error)
                else:
                    best.update(x, error)
                first_moment.lerp_(gradient, 1 - BETA1)
                second_moment.mul_(BETA2).addcmul_(gradient, gradient, value=1 - BETA2)
                torch.maximum(largest_second_moment, second_moment, out=largest_second_moment)
                denominator = largest_second_moment.sqrt().div_((1 - BETA2**step) ** 0.5).add_(ADAM_EPSILON)
                x.addcdiv_(first_moment, denominator, value=self.lr / (1 - BETA1**step))
                self._project(x, clean, ball)
        with torch.no_grad():
            logits, _ = self._forward(model, x, clean, model_dtype)
            best.update(x, self._pixel_error(logits, labels, valid))
        return best.x
