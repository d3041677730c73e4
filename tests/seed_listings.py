"""Plain-PyTorch transcriptions of the seed listings: the reference that ``polyfocal.compat`` must match.

Independent of polyfocal on purpose.  Each function/class keeps its original's math, including the quirks
that change numbers or gradients; only framework calls are translated (TensorFlow/Paddle ops to their torch
equivalents, ``Variable``/``.data`` to ``.detach()``), ``print`` calls are dropped and in-place state
mutation inside ``forward`` is replaced by local variables (noted where it happens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    # The listings' own if/elif: anything other than "mean"/"sum" returns the element loss.
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# --- seed 000: PolyLoss paper, TensorFlow listings (y_true one-hot / probabilities, y_pred logits) ---------


def poly1_cross_entropy_tf(y_true: torch.Tensor, y_pred: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    pt = (y_true * torch.softmax(y_pred, dim=-1)).sum(-1)
    ce = -(y_true * torch.log_softmax(y_pred, dim=-1)).sum(-1)  # tf.nn.softmax_cross_entropy_with_logits
    return (ce + epsilon * (1 - pt)).mean()


def poly1_focal_loss_tf(
    y_true: torch.Tensor, y_pred: torch.Tensor, gamma: float = 2.0, epsilon: float = 1.0, alpha: float = 0.25
) -> torch.Tensor:
    p = torch.sigmoid(y_pred)
    ce = F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")  # tf.nn.sigmoid_cross_entropy_...
    pt = y_true * p + (1 - y_true) * (1 - p)
    fl = ce * (1 - pt) ** gamma
    if alpha >= 0:
        fl = (alpha * y_true + (1 - alpha) * (1 - y_true)) * fl
    return (fl + epsilon * torch.pow(1 - pt, gamma + 1)).mean()


# --- seed 000: PolyLoss paper, PyTorch listings ------------------------------------------------------------


class Poly1CrossEntropyLoss(nn.Module):
    def __init__(self, num_classes: int, epsilon: float = 1.0, reduction: str = "none") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, num_classes=self.num_classes).to(device=logits.device, dtype=logits.dtype)
        pt = (onehot * F.softmax(logits, dim=-1)).sum(-1)
        ce = F.cross_entropy(logits, labels, reduction="none")
        return _reduce(ce + self.epsilon * (1 - pt), self.reduction)


class Poly1FocalLoss(nn.Module):
    def __init__(
        self,
        num_classes: int,
        epsilon: float = 1.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: str = "none",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        if labels.ndim == 1:  # [N] -> [N, C]
            labels = F.one_hot(labels, num_classes=self.num_classes)
        else:  # [N, ...] -> [N, C, ...]
            labels = F.one_hot(labels.unsqueeze(1), self.num_classes).transpose(1, -1).squeeze_(-1)
        labels = labels.to(device=logits.device, dtype=logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        pt = labels * p + (1 - labels) * (1 - p)
        fl = ce * (1 - pt) ** self.gamma
        if self.alpha >= 0:  # alpha < 0 disables the balance
            fl = (self.alpha * labels + (1 - self.alpha) * (1 - labels)) * fl
        return _reduce(fl + self.epsilon * torch.pow(1 - pt, self.gamma + 1), self.reduction)


# --- seed 001: paddle.nn.functional.sigmoid_focal_loss and PaddleDetection's FocalLoss ---------------------


def paddle_manual_formula(logits: torch.Tensor, label: torch.Tensor, alpha: float = 0.25, gamma: float = 2):
    """The blog's hand-written formula (its first printed tensor)."""
    p = torch.sigmoid(logits)
    return -label * alpha * (1 - p) ** gamma * torch.log(p) - (1 - label) * (1 - alpha) * p**gamma * torch.log(1 - p)


def paddle_sigmoid_focal_loss(
    logit: torch.Tensor,
    label: torch.Tensor,
    normalizer: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    pred = torch.sigmoid(logit)
    p_t = pred * label + (1 - pred) * (1 - label)
    alpha_t = alpha * label + (1 - alpha) * (1 - label)
    loss = torch.pow(1 - p_t, gamma) * (alpha_t * loss)
    if normalizer is not None:
        loss = loss / normalizer  # broadcast divisor
    return _reduce(loss, reduction)


class PPDetFocalLoss(nn.Module):
    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0):
        super().__init__()
        assert use_sigmoid is True, "Focal Loss only supports sigmoid at the moment"
        self.use_sigmoid = use_sigmoid
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        num_classes = pred.shape[1]
        target = F.one_hot(target, num_classes + 1).to(pred.dtype)
        target = target[:, :-1].detach()  # drop the background column
        loss = paddle_sigmoid_focal_loss(pred, target, alpha=self.alpha, gamma=self.gamma, reduction=reduction)
        return loss * self.loss_weight


# --- seed 002: yatengLG focal_loss ---------------------------------------------------------------------------


class YatengLGFocalLoss(nn.Module):
    def __init__(self, alpha=0.25, gamma=2, num_classes: int = 3, size_average: bool = True) -> None:
        super().__init__()
        self.size_average = size_average
        if isinstance(alpha, list):
            assert len(alpha) == num_classes
            self.alpha = torch.Tensor(alpha)  # float32, like the original
        else:
            assert alpha < 1
            self.alpha = torch.zeros(num_classes)
            self.alpha[0] += alpha
            self.alpha[1:] += 1 - alpha  # [a, 1-a, 1-a, ...]
        self.gamma = gamma

    def forward(self, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        preds = preds.view(-1, preds.size(-1))  # [B, N, C] or [B, C] -> [B*N, C]: the class dim is LAST
        logsoft = F.log_softmax(preds, dim=1)
        softmax = torch.exp(logsoft)
        softmax = softmax.gather(1, labels.view(-1, 1))
        logsoft = logsoft.gather(1, labels.view(-1, 1))
        # The original writes `self.alpha = self.alpha.gather(...)`, which breaks every later call; same math
        # with a local variable.
        alpha = self.alpha.to(preds.device).gather(0, labels.view(-1))
        loss = -torch.mul(torch.pow(1 - softmax, self.gamma), logsoft)
        loss = torch.mul(alpha, loss.t())
        return loss.mean() if self.size_average else loss.sum()


# --- seed 003: clcarwin FocalLoss --------------------------------------------------------------------------


class ClcarwinFocalLoss(nn.Module):
    def __init__(self, gamma=0, alpha=None, size_average: bool = True) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        if isinstance(alpha, (float, int)):  # (float, int, long) in the Python 2 original
            self.alpha = torch.Tensor([alpha, 1 - alpha])
        if isinstance(alpha, list):
            self.alpha = torch.Tensor(alpha)
        self.size_average = size_average

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() > 2:
            input = input.view(input.size(0), input.size(1), -1)  # N,C,H,W => N,C,H*W
            input = input.transpose(1, 2)  # N,C,H*W => N,H*W,C
            input = input.contiguous().view(-1, input.size(2))  # N,H*W,C => N*H*W,C
        target = target.view(-1, 1)
        logpt = F.log_softmax(input, dim=1)  # the original's implicit dim, which is 1 for 2-D input
        logpt = logpt.gather(1, target).view(-1)
        pt = logpt.detach().exp()  # Variable(logpt.data.exp()): p_t is a constant for autograd
        if self.alpha is not None:
            # The original re-assigns self.alpha = self.alpha.type_as(input) (a float32 call then rounds a
            # float64 alpha for good); a local conversion keeps the math of each call.
            at = self.alpha.type_as(input).gather(0, target.view(-1))
            logpt = logpt * at
        loss = -1 * (1 - pt) ** self.gamma * logpt
        return loss.mean() if self.size_average else loss.sum()


# --- seed 004: YOLOv5 FocalLoss ------------------------------------------------------------------------------


class YOLOv5FocalLoss(nn.Module):
    # Wraps focal loss around an nn.BCEWithLogitsLoss (its weight and pos_weight apply).
    def __init__(self, loss_fcn: nn.Module, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the focal factor applies to each element

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        pred_prob = torch.sigmoid(pred)  # TF-addons form
        p_t = true * pred_prob + (1 - true) * (1 - pred_prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        modulating_factor = (1.0 - p_t) ** self.gamma
        loss *= alpha_factor * modulating_factor
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
