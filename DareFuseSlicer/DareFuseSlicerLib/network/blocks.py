"""Building blocks of DareFuseNet. MONAI blocks do the convolutions; the modules here only say how the
parts are wired (availability gating, the cross-attention bridge, the class head)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from monai.networks.blocks import Convolution, SEBlock, UnetResBlock, UnetUpBlock
from torch import nn

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01})


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, C) values as (B, C, 1, 1, 1) so they multiply or concatenate with a (B, ., Z, Y, X) tensor."""
    return values.to(like.dtype).reshape(values.shape + (1,) * (like.dim() - 2))


class LesionRemovalGenerator(nn.Module):
    """The generative lesion-removal prior: a small conditional U-Net that predicts the tumour-free image.

    Conditioned on the availability flags (as constant channels). It predicts a residual on the input, so
    a tumour-free brain maps to itself by default; it works at half resolution and up-samples its residual
    with a transposed convolution because the residual is smooth at the scale of a lesion.
    """

    def __init__(self, n_contrasts: int, channels: Sequence[int]):
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = UnetResBlock(3, 2 * n_contrasts, c1, kernel_size=3, stride=2, norm_name=NORM, act_name=ACT)
        self.down2 = UnetResBlock(3, c1, c2, kernel_size=3, stride=2, norm_name=NORM, act_name=ACT)
        self.down3 = UnetResBlock(3, c2, c3, kernel_size=3, stride=2, norm_name=NORM, act_name=ACT)
        self.up2 = UnetUpBlock(3, c3, c2, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=NORM, act_name=ACT)
        self.up1 = UnetUpBlock(3, c2, c1, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=NORM, act_name=ACT)
        self.to_residual = nn.ConvTranspose3d(c1, n_contrasts, kernel_size=2, stride=2)
        nn.init.zeros_(self.to_residual.weight)  # start as the identity: tumour_free == input
        nn.init.zeros_(self.to_residual.bias)

    def forward(self, x: torch.Tensor, present: torch.Tensor, visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """visible (B, 1, Z, Y, X) or None: where the input may be seen (inpainting); the availability flags
        become per-voxel flags, 0 where a voxel is hidden, so the same weights take either input."""
        flags = broadcast(present, x).expand_as(x)
        if visible is not None:
            flags = flags * visible
        h1 = self.down1(torch.cat([x, flags], 1))
        h2 = self.down2(h1)
        h3 = self.down3(h2)
        up = self.up1(self.up2(h3, h2), h1)
        return (x + self.to_residual(up)) * broadcast(present, x)


def checkerboard(shape: Sequence[int], block: int, parity: int, offset: Sequence[int] = (0, 0, 0),
                 like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(1, 1, Z, Y, X) mask, 1 on the cubes of side `block` whose index sum has `parity` (cubes shifted by
    `offset` voxels): parities 0 and 1 together hide every voxel exactly once."""
    device = like.device if like is not None else None
    dtype = like.dtype if like is not None else torch.float32
    index = [(torch.arange(n, device=device) + o) // block for n, o in zip(shape, offset)]
    total = index[0][:, None, None] + index[1][None, :, None] + index[2][None, None, :]
    return (total % 2 == parity).to(dtype)[None, None]


def inpaint_healthy(generator: LesionRemovalGenerator, x: torch.Tensor, present: torch.Tensor,
                    block: int) -> torch.Tensor:
    """The twin-free prior's reconstruction: two passes, each hiding half of the cubes of a checkerboard;
    every voxel takes the value inpainted from its surroundings in the pass where it was hidden. The
    generator is trained only to fill hidden healthy tissue (training/prior.py), so a tumour cannot be
    inpainted from what surrounds it and stays in the difference x - reconstruction."""
    out = torch.zeros_like(x)
    for parity in (0, 1):
        hidden = checkerboard(x.shape[2:], block, parity, like=x)
        out = out + hidden * generator(x * (1.0 - hidden), present, visible=1.0 - hidden)
    return out


class Encoder(nn.Module):
    """One branch of the dual encoder: its two contrasts, their difference priors and availability flags.

    The first block already down-samples (stride 2): at 2 mm the brain box holds ~600k voxels, and a
    full-resolution layer per branch would cost more than the whole bottleneck. The decoder's
    full-resolution skip is the input itself (images and priors).
    """

    def __init__(self, in_channels: int, channels: Sequence[int]):
        super().__init__()
        c1, c2, c3 = channels
        self.level1 = UnetResBlock(3, in_channels, c1, kernel_size=3, stride=2, norm_name=NORM, act_name=ACT)
        self.level2 = UnetResBlock(3, c1, c2, kernel_size=3, stride=2, norm_name=NORM, act_name=ACT)
        self.level3 = UnetResBlock(3, c2, c3, kernel_size=3, stride=2, norm_name=NORM, act_name=ACT)

    def forward(self, x: torch.Tensor):
        f1 = self.level1(x)
        f2 = self.level2(f1)
        f3 = self.level3(f2)
        return [f1, f2, f3]


class GatedFusion(nn.Module):
    """Availability-gated fusion of the two encoders' features at one scale.

    "concat": the gated features of both branches side by side, then a learned 1x1x1 mix. Channel k of one
    encoder has nothing to do with channel k of the other, so the branches keep their identity up to the mix
    (with "mean" they did not, and darefuse-v2 never told enhancing tumour from oedema). "mean": the mean over
    the available branches, then the mix (the models trained before the change). Either way a missing branch
    contributes nothing, whatever its features, and one branch missing entirely works.
    """

    def __init__(self, channels: int, mode: str = "concat"):
        super().__init__()
        if mode not in ("concat", "mean"):
            raise ValueError(f"fusion mode must be concat or mean, got {mode!r}")
        self.mode = mode
        self.mix = Convolution(3, channels * (2 if mode == "concat" else 1), channels, kernel_size=1, norm=NORM, act=ACT)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        ga, gb = broadcast(ga, fa), broadcast(gb, fb)
        if self.mode == "concat":
            return self.mix(torch.cat([ga * fa, gb * fb], 1))
        mean = (ga * fa + gb * fb) / (ga + gb).clamp_min(1.0)
        return self.mix(mean)


class CrossAttentionBridge(nn.Module):
    """The feature-interaction bridge at the bottleneck: bidirectional cross-attention between the encoders.

    Each branch queries the other one; the update is gated by the other branch's availability, so a missing
    branch never injects information. Returns the availability-gated mean of the updated branches.
    """

    def __init__(self, channels: int, heads: int, fusion: str = "concat"):
        super().__init__()
        self.norm_a = nn.LayerNorm(channels)
        self.norm_b = nn.LayerNorm(channels)
        # torch's MultiheadAttention rather than MONAI's CrossAttentionBlock, which needs einops in addition.
        self.a_from_b = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.b_from_a = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.fuse = GatedFusion(channels, fusion)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        shape = fa.shape
        ta = self.norm_a(fa.flatten(2).transpose(1, 2))  # (B, N, C) tokens
        tb = self.norm_b(fb.flatten(2).transpose(1, 2))
        update_a = self.a_from_b(ta, tb, tb, need_weights=False)[0].transpose(1, 2).reshape(shape)
        update_b = self.b_from_a(tb, ta, ta, need_weights=False)[0].transpose(1, 2).reshape(shape)
        fa = fa + broadcast(gb, fa) * update_a
        fb = fb + broadcast(ga, fb) * update_b
        return self.fuse(fa, fb, ga, gb)


def residual_se_block(channels: int) -> SEBlock:
    """A residual squeeze-and-excitation bottleneck block (MONAI's SEBlock): one arm of the refiner."""
    return SEBlock(
        3, channels, channels // 2, channels // 2, channels, r=4,
        acti_type_1=("relu", {"inplace": False}), acti_type_final=("leakyrelu", {"negative_slope": 0.01}),
    )


class DomainAlignmentRefiner(nn.Module):
    """Maps the shared embedding onto two task-specific ones (segmentation, classification)."""

    def __init__(self, channels: int):
        super().__init__()
        self.segmentation = residual_se_block(channels)
        self.classification = residual_se_block(channels)

    def forward(self, shared: torch.Tensor):
        return self.segmentation(shared), self.classification(shared)


class LightUpBlock(nn.Module):
    """Up-sampling step for the full-resolution level: transposed convolution, skip concatenation, one
    convolution (MONAI's UnetUpBlock has two, which doubles the most expensive layer of the network)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.conv = Convolution(3, out_channels + skip_channels, out_channels, kernel_size=3, norm=NORM, act=ACT)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], 1))


class USegDecoder(nn.Module):
    """U-SEG: the segmentation decoder over the fused skips, ending in an evidential (Dirichlet) head.

    SEGU: the head outputs non-negative evidence per label; alpha = evidence + 1 gives probabilities and a
    one-pass uncertainty K / sum(alpha), with no Monte-Carlo passes.
    """

    def __init__(self, channels: Sequence[int], full_channels: int, skip_channels: int, n_labels: int):
        super().__init__()
        c1, c2, c3 = channels
        self.up2 = UnetUpBlock(3, c3, c2, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=NORM, act_name=ACT)
        self.up1 = UnetUpBlock(3, c2, c1, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=NORM, act_name=ACT)
        self.up0 = LightUpBlock(c1, skip_channels, full_channels)
        self.head = nn.Conv3d(full_channels, n_labels, kernel_size=1)
        self.evidence = nn.Softplus()

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """The head's logits (evidence = softplus(logits)). skips: the full-resolution input (images and
        priors), then the fused features at 1/2 and 1/4."""
        s0, s1, s2 = skips
        h = self.up0(self.up1(self.up2(bottleneck, s2), s1), s0)
        return self.head(h)


class ClassEvidenceHead(nn.Module):
    """CPG: the classification head over multi-scale features.

    A global part (average- and max-pooled features of three scales, then an MLP) plus a local part (a 1x1x1
    convolution of the classification embedding). Their sum is a coarse class-evidence map whose spatial mean
    is the class logits, so sliding windows stitch it like any other output.
    """

    def __init__(self, channels: Sequence[int], n_classes: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * sum(channels), hidden), nn.LeakyReLU(0.01), nn.Dropout(0.1), nn.Linear(hidden, n_classes)
        )
        self.local = nn.Conv3d(channels[-1], n_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        pooled = [torch.cat([f.mean((2, 3, 4)), f.amax((2, 3, 4))], 1) for f in features]
        global_logits = self.mlp(torch.cat(pooled, 1))
        local = self.local(features[-1])
        return local + global_logits[:, :, None, None, None]
