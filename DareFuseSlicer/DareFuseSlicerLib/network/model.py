"""DareFuseNet: dual encoders with a cross-attention bridge, a domain alignment refiner, the U-SEG decoder
with one-pass evidential uncertainty (SEGU), the CPG class head and the generative lesion-removal prior.

Data flow (channel order t1, t1ce, t2, flair; a missing contrast is a zero channel and a 0 in `present`):

    x, present -> generator -> tumour_free;  difference = (x - tumour_free) * present   (the prior)
    encoder A <- t1, t1ce, their differences, their flags;  encoder B <- t2, flair, ...
    skips: availability-gated fusion at 1/2 and 1/4, a residual block over input and prior at full resolution;
    bottleneck (1/8): bidirectional cross-attention
    refiner -> segmentation embedding -> U-SEG decoder -> Dirichlet evidence (bg, NETC, SNFH, ET)
            -> classification embedding + fused skips -> CPG -> class-evidence map (logits = its mean),
               computed at 1/8 resolution and repeated over 8x8x8 blocks so that sliding windows stitch it
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetResBlock
from torch import nn

from .blocks import (
    ACT,
    NORM,
    ClassEvidenceHead,
    CrossAttentionBridge,
    DomainAlignmentRefiner,
    Encoder,
    GatedFusion,
    LesionRemovalGenerator,
    USegDecoder,
    inpaint_healthy,
)
from .kle import KLEPrior

#: How the tumour-free image is made (NetConfig.prior_mode).
PRIOR_MODES = ("twin", "inpaint", "kle")

#: Channels of each encoder branch (indices into constants.CONTRASTS): T1/T1ce and T2/FLAIR.
BRANCHES = ((0, 1), (2, 3))


@dataclass
class NetConfig:
    """Architecture settings; stored in the model card so that a saved model rebuilds itself."""

    n_contrasts: int = 4
    n_labels: int = 4  # bg, NETC, SNFH, ET
    n_classes: int = 4  # constants.CLASSES
    encoder_channels: Tuple[int, int, int] = (16, 32, 96)  # 1/2, 1/4, 1/8 resolution
    decoder_full_channels: int = 8  # the decoder's full-resolution layer
    # A residual block over the images and priors at full resolution, the decoder's finest skip (0: the raw
    # images and priors, as before darefuse-v3: thin enhancing rims need more than one layer at 2 mm).
    stem_channels: int = 8
    fusion: str = "concat"  # blocks.GatedFusion
    generator_channels: Tuple[int, int, int] = (16, 32, 48)  # 1/2, 1/4, 1/8 resolution
    attention_heads: int = 4
    # The segmentation loss does not reach the generator through the prior: the prior stays a reconstruction.
    detach_prior: bool = True
    # How the generator makes the tumour-free image: "twin" (one pass; trained against the data engine's
    # tumour-free twins) or "inpaint" (blocks.inpaint_healthy: two checkerboard passes with cubes of
    # `inpaint_block` voxels; trained on hidden healthy tissue, no twins: training/prior.py) or "kle" (the
    # generator is kept, unused: kle.KLEPrior, `kle_components` terms at `kle_size`^3, fitted by training/kle_prior.py).
    prior_mode: str = "twin"
    inpaint_block: int = 12
    kle_size: int = 48
    kle_components: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "NetConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("encoder_channels", "generator_channels"):
            if key in known:
                known[key] = tuple(known[key])
        # Cards written before these settings existed describe the original wiring.
        known.setdefault("stem_channels", 0)
        known.setdefault("fusion", "mean")
        return cls(**known)


class DareFuseNet(nn.Module):
    """See the module docstring. Input sizes need not be multiples of 8: the input is padded and the
    outputs cropped back. Every output has the input's size; "class_evidence" is piecewise constant on
    8x8x8 blocks (it is computed at 1/8 resolution)."""

    #: Down-sampling factor between the input and the bottleneck / class-evidence map.
    stride = 8

    def __init__(self, config: NetConfig = None):
        super().__init__()
        self.config = config = config or NetConfig()
        if config.prior_mode not in PRIOR_MODES or config.inpaint_block < 1:
            raise ValueError(f"prior_mode must be one of {', '.join(PRIOR_MODES)} and inpaint_block positive, got "
                             f"{config.prior_mode!r}, {config.inpaint_block}")
        channels = config.encoder_channels
        self.generator = LesionRemovalGenerator(config.n_contrasts, config.generator_channels)
        # Only a "kle" model has the expansion's buffers, so the other modes' weight files are unchanged.
        self.kle = None
        if config.prior_mode == "kle":
            self.kle = KLEPrior(config.n_contrasts, config.kle_size, config.kle_components)
        # Per branch: 2 images + 2 differences + 2 availability flags.
        self.encoder_a = Encoder(6, channels)
        self.encoder_b = Encoder(6, channels)
        self.fuse1 = GatedFusion(channels[0], config.fusion)
        self.fuse2 = GatedFusion(channels[1], config.fusion)
        self.bridge = CrossAttentionBridge(channels[2], config.attention_heads, config.fusion)
        self.refiner = DomainAlignmentRefiner(channels[2])
        full = 2 * config.n_contrasts
        self.stem = None
        if config.stem_channels:
            self.stem = UnetResBlock(3, full, config.stem_channels, kernel_size=3, stride=1, norm_name=NORM, act_name=ACT)
            full = config.stem_channels
        self.decoder = USegDecoder(channels, config.decoder_full_channels, full, config.n_labels)
        self.classifier = ClassEvidenceHead(channels, config.n_classes)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, present: torch.Tensor, use_prior: bool = True) -> Dict[str, torch.Tensor]:
        """x (B, 4, Z, Y, X) z-scored, present (B, 4). use_prior=False feeds the encoders a zero prior (the
        ablation "without the prior"; training drops the prior now and then so that this stays valid)."""
        size = x.shape[2:]
        pad = [(-s) % self.stride for s in size]
        if any(pad):
            x = F.pad(x, [p for s in reversed(pad) for p in (0, s)])
        present = present.to(x.dtype)
        x = x * present[:, :, None, None, None]

        tumour_free = self.reconstruct(x, present)
        difference = (x - tumour_free) * present[:, :, None, None, None]
        prior = difference.detach() if self.config.detach_prior else difference
        if not use_prior:
            prior = torch.zeros_like(prior)

        gates = [present[:, list(branch)].amax(1, keepdim=True) for branch in BRANCHES]  # (B, 1) each
        features = []
        for encoder, branch in zip((self.encoder_a, self.encoder_b), BRANCHES):
            idx = list(branch)
            flags = present[:, idx, None, None, None].expand(-1, -1, *x.shape[2:])
            features.append(encoder(torch.cat([x[:, idx], prior[:, idx], flags], 1)))
        (a1, a2, a3), (b1, b2, b3) = features
        ga, gb = gates
        finest = torch.cat([x, prior], 1)
        if self.stem is not None:
            finest = self.stem(finest)
        skips = [finest, self.fuse1(a1, b1, ga, gb), self.fuse2(a2, b2, ga, gb)]
        shared = self.bridge(a3, b3, ga, gb)

        seg_embedding, cls_embedding = self.refiner(shared)
        logits = self.decoder(seg_embedding, skips)
        class_evidence = self.classifier([skips[1], skips[2], cls_embedding])

        # Returned at input resolution (each coarse cell repeated over its 8x8x8 block) rather than at 1/8:
        # MONAI 1.6.1's sliding_window_inference sorts the output keys and then applies the importance map
        # it shrank for a coarse "class_evidence" to the full-size outputs after it, which fails.
        class_evidence = F.interpolate(class_evidence, scale_factor=self.stride, mode="nearest")
        crop = tuple(slice(0, s) for s in size)
        out = {
            "tumour_free": tumour_free[(...,) + crop],
            "difference": difference[(...,) + crop],
            "evidence": self.decoder.evidence(logits)[(...,) + crop],
            "class_evidence": class_evidence[(...,) + crop],
        }
        if self.training:  # for the Dice and cross-entropy terms: sharper than the Dirichlet's expectation
            out["evidence_logits"] = logits[(...,) + crop]
        return out

    def reconstruct(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The generator's tumour-free image of a padded input, as its prior mode says."""
        if self.config.prior_mode == "inpaint":
            return inpaint_healthy(self.generator, x, present, self.config.inpaint_block)
        if self.config.prior_mode == "kle":
            return self.kle(x, present)
        return self.generator(x, present)

    # -- helpers on the output dict (also valid on sliding-window-stitched outputs) -----------------------
    @staticmethod
    def class_logits(out: Dict[str, torch.Tensor]) -> torch.Tensor:
        return out["class_evidence"].mean(dim=(2, 3, 4))

    @staticmethod
    def class_probabilities(out: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.softmax(DareFuseNet.class_logits(out), dim=1)

    @staticmethod
    def probabilities(out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected label probabilities under the Dirichlet: alpha / sum(alpha), (B, 4, ...)."""
        alpha = out["evidence"] + 1.0
        return alpha / alpha.sum(1, keepdim=True)

    @staticmethod
    def uncertainty(out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """SEGU one-pass uncertainty K / sum(alpha) in (0, 1], (B, 1, ...)."""
        alpha = out["evidence"] + 1.0
        return alpha.shape[1] / alpha.sum(1, keepdim=True)

    def gradcam_target_layers(self) -> List[nn.Module]:
        """Multi-scale layers for Grad-CAM++ of the class decision: the fused features at 1/2 and 1/4 and
        the classification embedding at 1/8, all of which feed the CPG head."""
        return [self.fuse1, self.fuse2, self.refiner.classification]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
