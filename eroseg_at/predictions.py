"""The predicted class map of logits: shared by the attacks, the metrics, training and evaluation.

It lives below all of them (torch only) so that none of them depends on another for it.
"""

from __future__ import annotations

from torch import Tensor


def predicted_classes(logits: Tensor) -> Tensor:
    """The class of highest logit per pixel, the first one on ties (as ``argmax``).

    ``max(1).indices`` rather than ``argmax(1)``: on the CPU, ``argmax`` over the strided class dimension
    of an NCHW tensor is many times slower (``benchmarks/class_prediction.py``; docs/PERFORMANCE.md).

    Shape:
        logits: [B, C, H, W]; output: [B, H, W] int64.
    """
    return logits.detach().max(1).indices
