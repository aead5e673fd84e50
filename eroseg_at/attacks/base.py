"""The shared machinery of every attack: argument parsing, the model-call contract and the PGD loop.

An attack is built once from its hyper-parameters and called as ``attack(model, images, labels)``; it holds no
model and no device, so one object serves a model that moves between devices or is wrapped by DDP. A seeded
attack keeps one random generator per device it has run on, so its random starts advance from call to call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eroseg_at.attacks.arguments import boolean, choice, integer, number, optional_integer
from eroseg_at.attacks.objectives import correct_pixels

NORMS = ("linf", "l2")
# Every Attack subclass that defines its own ``name``, by that name (filled by ``Attack.__init_subclass__``;
# :mod:`eroseg_at.attacks.registry` imports the package's modules so that all of them are here).
REGISTERED_ATTACKS: dict[str, type[Attack]] = {}


@contextmanager
def eval_mode(model: Callable[[Tensor], Any]) -> Iterator[None]:
    """Puts every module of ``model`` in eval mode and restores each module's own flag afterwards.

    Lightning restores per-module modes after validation and never calls ``.train()`` before a training
    step, so a blanket ``model.train()`` afterwards would wrongly switch on modules the user froze.
    A plain callable that is not an ``nn.Module`` is left alone.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass(frozen=True)
class Ball:
    """The set an iterate is projected onto: the ball of ``radius`` around the clean image, within [0, 1].

    Attributes:
        radius: Radius in the attack's norm.
        bounds: For ℓ∞, the box ``(max(clean − radius, 0), min(clean + radius, 1))``; None for ℓ2.
    """

    radius: float
    bounds: tuple[Tensor, Tensor] | None


@dataclass(frozen=True)
class DatasetFacts:
    """What an attack may take from the dataset it attacks (see :meth:`Attack.dataset_arguments`).

    Attributes:
        ignore_index: The label that never counts.
        background_class: The class EroSeg weights ``1 − λ``; None where no class is background.
        class_frequencies: Returns the ``[C]`` pixel frequencies of the training split (summing to 1);
            called only by attacks that need them, because counting them may read the whole split.
    """

    ignore_index: int
    background_class: int | None
    class_frequencies: Callable[[], Tensor]


class Attack:
    """Base class: argument checks, the model-call contract, random start and projection.

    Subclasses implement :meth:`_perturb`. :meth:`__call__` puts the model in eval mode (restoring each
    module's own mode afterwards), re-enables gradients on a fresh float32 copy of the input so the attack
    works inside ``torch.inference_mode()`` and ``torch.no_grad()``, and casts the result back.

    Args:
        eps: Radius of the perturbation ball in pixel units of [0, 1] images; a number or a string such as
            ``"8/255"`` (the default). In [0, 1] for ``linf``; >= 0 for ``l2``.
        steps: Number of gradient evaluations (forward + input-gradient backward passes), default 10.
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: Start from a uniform random point of the ball instead of the clean image, default True.
        ignore_index: Label value of pixels that never contribute to the objective, default 255.
        targeted: Steer the prediction towards ``labels`` (the target map) instead of away from it, default
            False; only attacks whose class attribute ``supports_targeted`` is true accept it.
        seed: Seed of the random starts; None (default) uses the global generator. The attack creates one
            ``torch.Generator`` per device, seeded with ``seed``, at its first call on that device, and every
            later call draws on from it: a seed fixes the sequence of a whole run, and a fresh attack object
            with the same seed reproduces it call by call.
    """

    # The generators are run state, not parameters: a slot keeps them out of ``vars(attack)``, which lists the
    # parameters (``repr``, the evaluation report). ``__dict__`` keeps subclasses free to add attributes.
    __slots__ = ("__dict__", "_generators")

    name: ClassVar[str] = ""
    supports_targeted: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False
    # False for a score-based attack (Square): it never asks for a gradient, so gradient masking cannot fool it,
    # and the gradient-masking checks compare it with the members that do.
    uses_gradients: ClassVar[bool] = True
    # Whether a call may end before ``steps`` gradient evaluations (APGD's option); reports say "at most".
    early_stop: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Registers a subclass that defines its own ``name``: the registry is derived from the classes."""
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name:
            return
        known = REGISTERED_ATTACKS.get(name)
        # The same class defined again (a module reloaded) replaces itself; another class may not take the name.
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(
                f"attack name {name!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
                f"{known.__module__}.{known.__qualname__}; give each attack class its own name"
            )
        REGISTERED_ATTACKS[name] = cls

    def __init__(
        self,
        eps: float | str = "8/255",
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        ignore_index: int = 255,
        targeted: bool = False,
        seed: int | None = None,
    ) -> None:
        self.norm = choice(norm, "norm", NORMS)
        self.eps = number(eps, "eps", minimum=0, maximum=1 if norm == "linf" else None)
        self.steps = integer(steps, "steps", 1)
        self.random_start = boolean(random_start, "random_start")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.targeted = boolean(targeted, "targeted")
        if targeted and not self.supports_targeted:
            raise ValueError(f"attack {self.name!r} has no targeted form; targeted must be False")
        self.seed = optional_integer(seed, "seed", 0)
        self._generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def dataset_arguments(cls, arguments: Mapping[str, Any], dataset: DatasetFacts) -> dict[str, Any]:
        """The constructor arguments to add to the user's ``arguments`` from the dataset.

        Evaluation builds attacks from suite entries and the dataset at hand; each attack class says here
        what it takes from the dataset (the base: ``ignore_index``), so the evaluation needs no knowledge
        of particular attacks. An argument the user gave is never replaced.
        """
        return {} if "ignore_index" in arguments else {"ignore_index": dataset.ignore_index}

    def radius_schedule(self) -> tuple[tuple[float, int], ...]:
        """``(radius as a multiple of eps, gradient evaluations)`` of each stage: one stage at eps by default."""
        return ((1.0, self.steps),)

    def model_problems(self, model: Callable) -> list[str]:
        """What keeps this attack from running on ``model`` (empty when nothing does).

        The evaluation asks every member before any attack runs, so that a suite that cannot run stops at once
        with every problem listed; subclasses add their own checks to the base's.
        """
        if self.uses_features and getattr(model, "logits_and_features", None) is None:
            return [features_missing(self.name, model)]
        return []

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __call__(self, model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor) -> Tensor:
        """Returns adversarial images for ``model``.

        Args:
            model: Maps [0, 1] images to logits; any ``nn.Module`` or callable. Attacks with
                ``uses_features`` call ``model.logits_and_features`` instead.
            images: Clean images in [0, 1].
            labels: Ground-truth label map (the target map when ``targeted``), ``ignore_index`` allowed.

        Returns:
            Adversarial images inside the eps-ball around ``images`` and inside [0, 1], in the dtype of
            ``images``: a low-precision result is rounded towards ``images`` (:func:`in_dtype`), so the ball
            holds for the returned values themselves.

        Shape:
            images: [B, 3, H, W] float; labels: [B, H, W] integer; output: like ``images`` (same dtype and
            device).
        """
        return self._run(model, images, labels, self._perturb)

    def _run(self, model: Callable, images: Tensor, labels: Tensor, perturb: Callable[..., Tensor]) -> Tensor:
        """The contract of :meth:`__call__` around ``perturb(model, clean, labels, valid, model_dtype)``."""
        self._check_inputs(images, labels)
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            # A fresh copy made outside inference mode is a normal tensor that can require grad even when the
            # caller passed inference tensors (Lightning's validation loop); float32 keeps eps-sized steps exact.
            clean = images.detach().to(torch.float32, copy=True)
            labels = labels.detach().to(torch.int64, copy=True)
            valid = labels != self.ignore_index
            adversarial = perturb(model, clean, labels, valid, images.dtype)
        return in_dtype(adversarial, clean, images.dtype)

    def _check_inputs(self, images: Tensor, labels: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor [B, C, H, W], got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
            )
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"labels must be an integer tensor [B, H, W], got {getattr(labels, 'dtype', labels)}"
            )
        expected = (images.shape[0], *images.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"labels must have shape {expected} to match images, got {tuple(labels.shape)}")
        if labels.device != images.device:
            raise ValueError(f"labels are on {labels.device} but images on {images.device}")
        low, high = torch.aminmax(images.detach())
        if low < 0 or high > 1:
            raise ValueError(
                f"images must lie in [0, 1], got values in [{low.item():.4g}, {high.item():.4g}]"
            )

    def _perturb(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        raise NotImplementedError

    def _forward(
        self, model: Callable, x: Tensor, clean: Tensor, model_dtype: torch.dtype
    ) -> tuple[Tensor, Tensor | None]:
        """Runs the model; returns float32 logits and, for ``uses_features`` attacks, the decoder features.

        The model sees ``x`` as :meth:`__call__` would return it (:func:`in_dtype`), so the pixel error of an
        evaluated iterate is the pixel error of the image the attack returns for it.
        """
        x_model = in_dtype(x, clean, model_dtype)
        if not self.uses_features:
            return model(x_model).float(), None
        logits_and_features = getattr(model, "logits_and_features", None)
        if logits_and_features is None:
            raise TypeError(features_missing(self.name, model))
        logits, features = logits_and_features(x_model)
        return logits.float(), features.float()

    def _generator(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator of ``device``, created at the first call there; None without a seed."""
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _ball(self, clean: Tensor, radius: float | None = None) -> Ball:
        """The ball of ``radius`` (default ``eps``) around ``clean``, intersected with [0, 1]."""
        radius = self.eps if radius is None else radius
        if self.norm != "linf":
            return Ball(radius, None)
        return Ball(radius, ((clean - radius).clamp_(min=0), (clean + radius).clamp_(max=1)))

    def _start(self, clean: Tensor, radius: float | None = None) -> Tensor:
        """The first iterate: the clean image, or a uniform random point of the ball clipped to [0, 1].

        ``radius`` defaults to ``eps``. ℓ∞: uniform in the box. ℓ2: uniform in the ball, i.e. a Gaussian
        direction (uniform on the sphere) with radius ``radius · u^(1/d)``, u uniform in [0, 1] and d the
        number of values per image (the volume of a ball grows as r^d).
        """
        if not self.random_start:
            return clean.clone()
        radius = self.eps if radius is None else radius
        generator = self._generator(clean.device)
        if self.norm == "linf":
            delta = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
            delta.mul_(2).sub_(1).mul_(radius)
        else:
            direction = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
            length = torch.rand(
                (clean.shape[0], 1, 1, 1), generator=generator, device=clean.device, dtype=clean.dtype
            )
            length.pow_(1.0 / clean[0].numel()).mul_(radius)
            delta = direction.mul_(length / _per_image_norm(direction))
        return (clean + delta).clamp_(0, 1)

    def _project(self, x: Tensor, clean: Tensor, ball: Ball) -> Tensor:
        """Projects ``x`` in place onto ``ball`` (around ``clean``, within [0, 1])."""
        if ball.bounds is not None:
            return x.clamp_(ball.bounds[0], ball.bounds[1])
        delta = x.sub_(clean)
        delta.mul_((ball.radius / _per_image_norm(delta)).clamp_(max=1.0))
        return delta.add_(clean).clamp_(0, 1)

    def _direction(self, gradient: Tensor) -> Tensor:
        """The steepest-ascent direction of unit norm: ``sign(g)`` (ℓ∞) or ``g/‖g‖₂`` per image (ℓ2).

        Overwrites and returns ``gradient``.
        """
        if self.norm == "linf":
            return gradient.sign_()
        return gradient.div_(_per_image_norm(gradient))

    def _pixel_error(self, logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        """Per image, the fraction of valid pixels the attack has not yet won (lower is a stronger attack).

        Untargeted: pixels still predicted as their label; targeted: pixels not yet predicted as their target.

        Shape:
            logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B] float.
        """
        hit = correct_pixels(logits, labels, valid)
        remaining = (valid & ~hit) if self.targeted else hit
        return remaining.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def features_missing(attack: str, model: Callable) -> str:
    """The message for a feature attack given a model without decoder features."""
    return (
        f"attack {attack!r} needs decoder features: the model must have a method "
        f"logits_and_features(x) -> (logits [B,C,H,W], features [B,D,h,w]); "
        f"{type(model).__name__} has none (a model whose source exposes no decoder features, such as "
        "LR-ASPP or a TorchScript module, cannot be attacked by it; and pass the model, not a DDP wrapper)"
    )


def in_dtype(x: Tensor, clean: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``, rounded towards ``clean`` wherever rounding to nearest would move it away from it.

    ``clean`` must be exact in ``dtype`` (it is the input image). Then ``|result − clean| ≤ |x − clean|``
    elementwise, so a point of the ℓ∞ or ℓ2 ball within [0, 1] stays inside them after a cast to bf16 or
    float16, whose rounding to nearest can otherwise step up to half a unit in the last place out of the
    ball. Dtypes at least as precise as ``x``'s are a plain cast. Gradients pass as through a cast.

    Shape:
        x, clean: [B, C, H, W] float32; output: like ``x``, in ``dtype``.
    """
    nearest = x.to(dtype)
    if torch.finfo(dtype).eps <= torch.finfo(x.dtype).eps:
        return nearest
    with torch.no_grad():
        widened = nearest.to(x.dtype)
        # Exact comparisons, no subtraction: the decision itself must not round.
        outward = ((widened > x) & (x > clean)) | ((widened < x) & (x < clean))
        inward = torch.where(outward, torch.nextafter(nearest, clean.to(dtype)), nearest)
    # Adjacent values differ by a power of two, so the sum is exact: it equals ``inward``, with the gradient of
    # the cast.
    return nearest + (inward - nearest.detach())


def _per_image_norm(x: Tensor) -> Tensor:
    """ℓ2 norm of each image, shaped [B, 1, 1, 1] and clamped away from 0 so dividing by it is safe."""
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


class BestIterate:
    """Keeps, per image, the iterate with the lowest pixel error seen so far (ties keep the earlier one).

    Shape:
        x: [B, ...]; error: [B].
    """

    def __init__(self, x: Tensor, error: Tensor) -> None:
        self.x = x.detach().clone()
        self.error = error.clone()

    def update(self, x: Tensor, error: Tensor) -> None:
        improved = error < self.error
        self.error = torch.where(improved, error, self.error)
        self.x = torch.where(improved.view(-1, *([1] * (x.dim() - 1))), x.detach(), self.x)


class IterativeAttack(Attack):
    """PGD over a per-pixel objective: ``x ← Π(x + alpha · sign(∇L))`` (ℓ∞) or ``alpha · ∇L/‖∇L‖₂`` (ℓ2).

    Subclasses implement :meth:`objective` (and :meth:`_init_state` when they keep state across
    iterations). The loop does ``steps`` forward + input-gradient backward passes and no host
    synchronisation; with ``track_best`` it keeps, per image, the iterate with the fewest correct pixels,
    at the cost of one extra gradient-free forward pass on the last iterate.

    Args:
        alpha: Step size in pixel units (ℓ∞) or ℓ2 length (ℓ2); a number or a string such as ``"2/255"``;
            default 0.01.
        track_best: Return each image's best iterate instead of the last one, default False.
        **kwargs: The common arguments of :class:`Attack`.
    """

    def __init__(self, alpha: float | str = 0.01, track_best: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = number(alpha, "alpha", minimum=0, exclusive_minimum=True)
        self.track_best = boolean(track_best, "track_best")

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        """Per-image loss to ascend at iteration ``step`` (0-based).

        Shape:
            logits: [B, C, H, W] float32; features: [B, D, h, w] or None; labels, valid: [B, H, W];
            output: [B].
        """
        raise NotImplementedError

    def _init_state(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> dict:
        """Per-call state shared by the iterations of :meth:`objective`; none by default."""
        return {}

    def _perturb(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        state = self._init_state(model, clean, labels, valid, model_dtype)
        ball = self._ball(clean)
        x = self._start(clean)
        best = None
        for step in range(self.steps):
            gradient, logits = self._gradient(model, x, clean, labels, valid, step, state, model_dtype)
            with torch.no_grad():
                x = x.detach()
                if self.track_best:
                    error = self._pixel_error(logits, labels, valid)
                    if best is None:
                        best = BestIterate(x, error)
                    else:
                        best.update(x, error)
                x.add_(self._direction(gradient), alpha=self.alpha)
                self._project(x, clean, ball)
        if best is None:
            return x
        with torch.no_grad():
            logits, _ = self._forward(model, x, clean, model_dtype)
            best.update(x, self._pixel_error(logits, labels, valid))
        return best.x

    def _gradient(
        self,
        model: Callable,
        x: Tensor,
        clean: Tensor,
        labels: Tensor,
        valid: Tensor,
        step: int | Tensor,
        state: dict,
        model_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """The input gradient of the objective at ``x`` (``step``: one iteration index, or one per image),
        and the float32 logits there."""
        x.requires_grad_(True)
        logits, features = self._forward(model, x, clean, model_dtype)
        # Softmax and losses in float32 even under autocast: low-precision probabilities saturate.
        with torch.autocast(device_type=x.device.type, enabled=False):
            if isinstance(step, int):
                loss = self.objective(logits, features, labels, valid, step, state)
            else:
                # Each image ascends the objective of its own iteration; one forward pass serves them all.
                loss = None
                for index in step.unique().tolist():
                    value = self.objective(logits, features, labels, valid, int(index), state)
                    loss = value if loss is None else torch.where(step == index, value, loss)
        (gradient,) = torch.autograd.grad(loss.sum(), x)
        return gradient, logits

    def step_from(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        labels: Tensor,
        start: Tensor,
        iterations: Tensor,
        alpha: float | None = None,
        radius: float | None = None,
    ) -> Tensor:
        """One iteration of the attack from ``start`` instead of from its own start.

        For attacks amortised across calls (a perturbation kept per training image and continued at each visit,
        or a single large step from wide noise): each image ascends the objective of its own 0-based iteration
        ``iterations[b]`` (EroSeg's threshold τ_k grows with k), one forward and one input-gradient backward
        pass in all, under the contract of :meth:`__call__` (eval mode, modes restored, input gradients only).

        Args:
            model, images, labels: As for :meth:`__call__`; ``images`` are the clean images, the ball's centre.
            start: The iterate to step from, in [0, 1]; it is projected onto the ball first.
            iterations: The iteration index of each image, integer, >= 0.
            alpha: The step; default the attack's ``alpha``.
            radius: The ball's radius; default ``eps``. For ℓ∞ a radius of 1 keeps the step inside [0, 1]
                only (N-FGSM's unclipped step).

        Shape:
            images, start: [B, 3, H, W]; labels: [B, H, W]; iterations: [B]; output: like ``images``.
        """
        if not isinstance(start, Tensor) or start.shape != images.shape:
            raise ValueError(
                f"start must be a tensor shaped like images {tuple(images.shape)}, got "
                f"{tuple(getattr(start, 'shape', ())) or type(start).__name__}"
            )
        if (
            not isinstance(iterations, Tensor)
            or iterations.shape != images.shape[:1]
            or iterations.is_floating_point()
            or (iterations < 0).any()
        ):
            raise ValueError(
                f"iterations must be a non-negative integer tensor of shape [{images.shape[0]}], got {iterations!r}"
            )
        alpha = self.alpha if alpha is None else number(alpha, "alpha", minimum=0, exclusive_minimum=True)
        radius = self.eps if radius is None else number(radius, "radius", minimum=0)

        def perturb(model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype):
            state = self._init_state(model, clean, labels, valid, model_dtype)
            ball = self._ball(clean, radius)
            x = self._project(start.detach().to(torch.float32, copy=True).clamp_(0, 1), clean, ball)
            gradient, _ = self._gradient(
                model, x, clean, labels, valid, iterations.to(clean.device), state, model_dtype
            )
            with torch.no_grad():
                x = x.detach().add_(self._direction(gradient), alpha=alpha)
                return self._project(x, clean, ball)

        return self._run(model, images, labels, perturb)
