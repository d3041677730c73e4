"""Plain-PyTorch transcriptions of the detection / multi-label listings that ``polyfocal.compat.timm`` and
``polyfocal.compat.mmdet`` must match (written for these tests in the style of ``seed_listings.py``; independent of
polyfocal).  Each keeps its original's math and quirks: timm's ``eps`` clamp and ``-loss.sum()``, mmdet's
``focal_weight`` masks, per-anchor sums and ``weight_reduce_loss`` with ``avg_factor + float32 eps``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --- timm.loss.asymmetric_loss.AsymmetricLossMultiLabel -------------------------------------------------------------


class AsymmetricLossMultiLabel(nn.Module):
    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=False):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss

    def forward(self, x, y):
        prob = torch.sigmoid(x)
        prob_pos, prob_neg = prob, 1 - prob
        if self.clip is not None and self.clip > 0:
            prob_neg = (prob_neg + self.clip).clamp(max=1)  # the probability margin
        loss = y * torch.log(prob_pos.clamp(min=self.eps)) + (1 - y) * torch.log(prob_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(not self.disable_torch_grad_focal_loss and torch.is_grad_enabled()):
                pt = prob_pos * y + prob_neg * (1 - y)
                exponent = self.gamma_pos * y + self.gamma_neg * (1 - y)
                focusing = torch.pow(1 - pt, exponent)
            loss = loss * focusing
        return -loss.sum()


# --- mmdet.models.losses (3.x): weight_reduce_loss, varifocal_loss, quality_focal_loss -------------------------------


def weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    if reduction != "none":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def varifocal_loss(pred, target, weight=None, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean",
                   avg_factor=None):  # fmt: skip
    prob = pred.sigmoid()
    target = target.type_as(pred)
    positive, negative = (target > 0.0).float(), (target <= 0.0).float()
    lead = target * positive if iou_weighted else positive
    focal_weight = lead + alpha * (prob - target).abs().pow(gamma) * negative
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


class VarifocalLoss(nn.Module):
    def __init__(self, use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean", loss_weight=1.0):
        super().__init__()
        assert use_sigmoid is True
        assert alpha >= 0.0
        self.alpha, self.gamma, self.iou_weighted = alpha, gamma, iou_weighted
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override if reduction_override else self.reduction
        return self.loss_weight * varifocal_loss(
            pred, target, weight, self.alpha, self.gamma, self.iou_weighted, reduction, avg_factor
        )


def quality_focal_loss(pred, target, beta=2.0):
    """The (label, score) pair form: negatives supervised by 0, the labelled class of a foreground anchor by score."""
    label, score = target
    prob = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * prob.pow(beta)
    foreground = ((label >= 0) & (label < pred.size(1))).nonzero().squeeze(1)
    fg_label = label[foreground].long()
    gap = score[foreground] - prob[foreground, fg_label]
    loss[foreground, fg_label] = F.binary_cross_entropy_with_logits(
        pred[foreground, fg_label], score[foreground], reduction="none"
    ) * gap.abs().pow(beta)
    return loss.sum(dim=1)


def quality_focal_loss_tensor_target(pred, target, beta=2.0):
    """The dense soft-score form: every non-zero target element is supervised by its value."""
    prob = pred.sigmoid()
    target = target.type(pred.dtype)
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * prob.pow(beta)
    nonzero = target != 0
    gap = target[nonzero] - prob[nonzero]
    loss[nonzero] = F.binary_cross_entropy_with_logits(
        pred[nonzero], target[nonzero], reduction="none"
    ) * gap.abs().pow(beta)
    return loss.sum(dim=1)


class QualityFocalLoss(nn.Module):
    def __init__(self, use_sigmoid=True, beta=2.0, reduction="mean", loss_weight=1.0, activated=False):
        super().__init__()
        assert use_sigmoid is True
        assert not activated
        self.beta, self.reduction, self.loss_weight = beta, reduction, loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override if reduction_override else self.reduction
        fn = quality_focal_loss_tensor_target if isinstance(target, torch.Tensor) else quality_focal_loss
        loss = fn(pred, target, beta=self.beta)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
