"""Losses of DareFuseNet: region Dice + cross-entropy + evidential (Dirichlet) loss for the segmentation, L1 for the
lesion-removal generator, cross-entropy for the class, and the mean-teacher consistency."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ..constants import CLASSES, REGIONS

NO_TUMOUR = CLASSES.index("no_tumour")


def regions_from_probabilities(prob: torch.Tensor) -> torch.Tensor:
    """(B, 4, ...) label probabilities -> (B, 3, ...) probabilities of the nested BraTS regions WT, TC, ET."""
    return torch.stack([prob[:, list(labels)].sum(1) for labels in REGIONS.values()], 1)


def regions_from_label(label: torch.Tensor) -> torch.Tensor:
    """(B, ...) integer labels -> (B, 3, ...) float masks of WT, TC, ET."""
    return torch.stack([sum((label == v) for v in labels).float() for labels in REGIONS.values()], 1)


def evidential_loss(evidence: torch.Tensor, label: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Type-II maximum-likelihood loss of a Dirichlet (Sensoy et al. 2018, eq. 3) plus the KL term that
    shrinks the evidence of wrong labels towards the uniform Dirichlet, weighted by an annealed kl_weight.

    Hand-written: MONAI has no evidential loss. evidence (B, K, ...) >= 0, label (B, ...) integer.
    """
    n_labels = evidence.shape[1]
    alpha = evidence + 1.0
    strength = alpha.sum(1, keepdim=True)
    one_hot = F.one_hot(label.long(), n_labels).movedim(-1, 1).to(alpha.dtype)
    likelihood = (one_hot * (torch.log(strength) - torch.log(alpha))).sum(1)
    # KL(Dir(alpha_tilde) || Dir(1)) with the evidence of the true label removed.
    alpha_tilde = one_hot + (1.0 - one_hot) * alpha
    strength_tilde = alpha_tilde.sum(1, keepdim=True)
    kl = (
        torch.lgamma(strength_tilde).squeeze(1)
        - torch.lgamma(torch.tensor(float(n_labels), dtype=alpha.dtype, device=alpha.device))
        - torch.lgamma(alpha_tilde).sum(1)
        + ((alpha_tilde - 1.0) * (torch.digamma(alpha_tilde) - torch.digamma(strength_tilde))).sum(1)
    )
    return (likelihood + kl_weight * kl).mean()


def kl_annealing(epoch: int, anneal_epochs: int, maximum: float = 1.0) -> float:
    """The KL weight grows linearly over the first anneal_epochs (as in Sensoy et al.): early on the
    network must first learn where the evidence belongs."""
    return maximum * min(1.0, epoch / max(anneal_epochs, 1))


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, present: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L1 over the given contrasts only; weight (B,) selects cases (e.g. those with a tumour-free pair), or
    (B, 1, Z, Y, X) voxels (e.g. the hidden healthy voxels of inpainting)."""
    mask = present[:, :, None, None, None].expand_as(prediction)
    if weight is not None:
        mask = mask * (weight if weight.dim() == prediction.dim() else weight[:, None, None, None, None])
    return ((prediction - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class LossWeights:
    dice: float = 1.0
    cross_entropy: float = 1.0
    evidential: float = 1.0
    generator: float = 1.0
    identity: float = 0.5
    classification: float = 0.5


class DareFuseLoss:
    """All supervised terms for one batch. Any of label / tumour_free may be missing for some cases
    (limited labels): `labelled` (B,) says whose segmentation and tumour-free images may be used."""

    def __init__(self, weights: LossWeights = None):
        self.weights = weights or LossWeights()
        # Per region over the whole batch; regions absent from the batch (a no-tumour case, a tumour without
        # ET) are left to the evidential loss: their Dice would be ~1 with no useful gradient.
        self.dice = DiceLoss(sigmoid=False, softmax=False, batch=True, reduction="none", smooth_nr=1e-3, smooth_dr=1e-3)

    def __call__(
        self,
        out: Dict[str, torch.Tensor],
        x: torch.Tensor,
        present: torch.Tensor,
        label: torch.Tensor,
        tumour_free: torch.Tensor,
        class_index: torch.Tensor,
        labelled: torch.Tensor,
        kl_weight: float,
    ) -> Dict[str, torch.Tensor]:
        w = self.weights
        terms: Dict[str, torch.Tensor] = {}
        # A zero that touches every output, so that DDP sees a gradient for every parameter in every step.
        zero = sum(value.sum() for value in out.values()) * 0.0
        keep = labelled.bool()
        has_generator = "tumour_free" in out
        if keep.any():
            evidence = out["evidence"][keep]
            if "evidence_logits" in out:
                # Dice and cross-entropy on softmax(logits): the same arg-max as the evidence (softplus is
                # monotonic), but sharp. The Dirichlet's expectation alpha / S stays soft over the huge
                # background, and its Dice alone let the small TC and ET regions collapse (darefuse-v1).
                logits = out["evidence_logits"][keep]
                prob = torch.softmax(logits, 1)
                terms["cross_entropy"] = F.cross_entropy(logits, label[keep].long())
            else:
                alpha = evidence + 1.0
                prob = alpha / alpha.sum(1, keepdim=True)
                terms["cross_entropy"] = zero
            target = regions_from_label(label[keep])
            per_region = self.dice(regions_from_probabilities(prob), target).reshape(-1)
            occupied = target.sum(dim=(0, 2, 3, 4)) > 0
            terms["dice"] = per_region[occupied].mean() if occupied.any() else zero
            terms["evidential"] = evidential_loss(evidence, label[keep], kl_weight)
            terms["generator"] = (
                masked_l1(out["tumour_free"][keep], tumour_free[keep], present[keep]) if has_generator else zero
            )
        else:
            terms["dice"] = terms["cross_entropy"] = terms["evidential"] = terms["generator"] = zero
        # Identity on tumour-free brains: needs only the class label, so unlabelled cases contribute too.
        healthy = (class_index == NO_TUMOUR).to(x.dtype)
        terms["identity"] = masked_l1(out["tumour_free"], x, present, healthy) if has_generator and healthy.any() else zero
        if "class_evidence" in out and (class_index >= 0).any():  # negative: ignored (a crop without its tumour)
            logits = out["class_evidence"].mean(dim=(2, 3, 4))
            terms["classification"] = F.cross_entropy(logits, class_index.long(), ignore_index=-100)
        else:
            terms["classification"] = zero
        terms["total"] = (
            w.dice * terms["dice"] + w.cross_entropy * terms["cross_entropy"] + w.evidential * terms["evidential"]
            + w.generator * terms["generator"]
            + w.identity * terms["identity"] + w.classification * terms["classification"] + zero
        )
        return terms


def consistency_loss(student: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-teacher consistency: squared distance between student and teacher label probabilities,
    reconstructions and class probabilities (the teacher's outputs carry no gradient)."""
    def probs(out):
        alpha = out["evidence"] + 1.0
        return alpha / alpha.sum(1, keepdim=True)

    seg = F.mse_loss(probs(student), probs(teacher).detach())
    recon = F.mse_loss(student["tumour_free"], teacher["tumour_free"].detach())
    cls = F.mse_loss(
        torch.softmax(student["class_evidence"].mean(dim=(2, 3, 4)), 1),
        torch.softmax(teacher["class_evidence"].mean(dim=(2, 3, 4)), 1).detach(),
    )
    return seg + recon + cls
