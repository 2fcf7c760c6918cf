"""The logistic-regression model: one ``nn.Linear`` producing logits. No Hydra.

Binary data gets one logit (sigmoid for the probability, BCE-with-logits for the loss);
C > 2 classes get C logits (softmax, cross-entropy): multinomial logistic regression. The loss is
always taken on logits, never ``sigmoid`` then ``BCELoss``, which saturates to log(0).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LogisticRegression(nn.Module):
    """Logistic regression over ``n_features`` inputs and ``n_classes`` classes."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes}; a classifier needs at least 2")
        self.n_features = n_features
        self.n_classes = n_classes
        self.linear = nn.Linear(n_features, 1 if n_classes == 2 else n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: shape [n, 1] for binary data, [n, C] otherwise."""
        return self.linear(x)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, shape [n, C] (two columns for binary data)."""
        return logits_to_proba(self(x))


def logits_to_proba(logits: torch.Tensor) -> torch.Tensor:
    """[n, 1] binary logits -> [n, 2] probabilities; [n, C] logits -> softmax."""
    if logits.shape[-1] == 1:
        p1 = torch.sigmoid(logits)
        return torch.cat([1 - p1, p1], dim=-1)
    return torch.softmax(logits, dim=-1)


def loss_on_logits(
    logits: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE-with-logits (one logit) or cross-entropy (C logits); ``y`` holds int class codes.

    With ``sample_weight`` s ([n], >= 0): ``mean(s * per-sample loss)``, divided by the row
    count n and not by ``sum(s)`` -- ``BCEWithLogitsLoss(weight=s)``'s convention, used for
    cross-entropy too (unlike ``cross_entropy(weight=...)``, whose mean divides by the weights).
    """
    if logits.shape[-1] == 1:
        target = y.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), target, weight=sample_weight)
    if sample_weight is None:
        return F.cross_entropy(logits, y)
    return (sample_weight * F.cross_entropy(logits, y, reduction="none")).mean()
