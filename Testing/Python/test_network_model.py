"""DareFuseNet: output contract, every subset of contrasts, missing-branch isolation, helpers, speed."""
import itertools
import time

import numpy as np
import pytest
import torch

from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig, count_parameters

SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(range(4), r)]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DareFuseNet(NetConfig()).eval()


def _inputs(shape=(24, 32, 24), subset=(0, 1, 2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4) + shape, generator=g)
    present = torch.zeros(1, 4)
    present[0, list(subset)] = 1.0
    return x * present[:, :, None, None, None], present


def test_parameter_count_in_budget(net):
    assert 1_000_000 <= count_parameters(net) <= 3_000_000


def test_output_contract_and_padding(net):
    x, present = _inputs((21, 30, 19))  # not multiples of 8: padded inside, cropped back
    with torch.no_grad():
        out = net(x, present)
    assert set(out) == {"tumour_free", "difference", "evidence", "class_evidence"}
    for key in ("tumour_free", "difference", "evidence"):
        assert out[key].shape == (1, 4, 21, 30, 19)
    assert out["class_evidence"].shape == (1, 4, 21, 30, 19)
    assert torch.equal(out["class_evidence"][..., :8, :8, :8], out["class_evidence"][..., :1, :1, :1].expand(-1, -1, 8, 8, 8))
    assert (out["evidence"] >= 0).all()
    assert torch.allclose(out["difference"], x - out["tumour_free"], atol=1e-5)
    assert DareFuseNet.class_logits(out).shape == (1, 4)
    prob = DareFuseNet.probabilities(out)
    assert torch.allclose(prob.sum(1), torch.ones(1, 21, 30, 19), atol=1e-5)
    u = DareFuseNet.uncertainty(out)
    assert u.shape == (1, 1, 21, 30, 19) and (u > 0).all() and (u <= 1).all()


def test_generator_starts_as_identity():
    net = DareFuseNet(NetConfig()).eval()
    x, present = _inputs()
    with torch.no_grad():
        out = net(x, present)
    assert torch.allclose(out["tumour_free"], x, atol=1e-6)


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join("T1 T1ce T2 FLAIR".split()[i] for i in s))
def test_every_subset_of_contrasts(net, subset):
    x, present = _inputs(subset=subset, seed=len(subset))
    with torch.no_grad():
        out = net(x, present)
    missing = [c for c in range(4) if c not in subset]
    for value in out.values():
        assert torch.isfinite(value).all()
    # Missing contrasts have no reconstruction and no difference prior.
    assert out["tumour_free"][:, missing].abs().max().item() == 0.0 if missing else True
    assert out["difference"][:, missing].abs().max().item() == 0.0 if missing else True


def test_missing_contrast_content_is_ignored(net):
    """Whatever a caller leaves in a missing channel must not change any output."""
    x, present = _inputs(subset=(3,))  # FLAIR only: the whole T1/T1ce branch is missing
    noisy = x.clone()
    noisy[:, :3] = torch.randn_like(noisy[:, :3]) * 5
    with torch.no_grad():
        a, b = net(x, present), net(noisy, present)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_prior_ablation_changes_segmentation_only_through_the_prior():
    torch.manual_seed(1)
    net = DareFuseNet(NetConfig()).eval()
    torch.nn.init.normal_(net.generator.to_residual.weight, std=0.5)  # a non-trivial prior
    x, present = _inputs()
    with torch.no_grad():
        with_prior, without = net(x, present), net(x, present, use_prior=False)
    assert torch.allclose(with_prior["tumour_free"], without["tumour_free"])
    assert not torch.allclose(with_prior["evidence"], without["evidence"])


def test_gradcam_target_layers_are_multiscale(net):
    layers = net.gradcam_target_layers()
    shapes = []
    hooks = [layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:]))) for layer in layers]
    with torch.no_grad():
        net(*_inputs((32, 32, 32)))
    for hook in hooks:
        hook.remove()
    assert shapes == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]


def test_sliding_window_stitches_every_output():
    """Every output has the window's size (MONAI 1.6.1 fails on a coarse output sorted before full-size ones)
    and is stitched right: one window over the volume gives the whole pass for every output, and with several
    windows the difference stays the input minus the reconstruction. The generator is made non-trivial
    first: an untrained one is the identity, which any stitching reproduces."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(1)
    net = DareFuseNet(NetConfig()).eval()
    torch.nn.init.normal_(net.generator.to_residual.weight, std=0.5)
    x, present = _inputs((40, 48, 40))

    def stitched(roi):
        return sliding_window_inference(x, roi, 1, lambda w: net(w, present.expand(w.shape[0], -1)),
                                        overlap=0.25, mode="gaussian")

    with torch.no_grad():
        whole, single, out = net(x, present), stitched((40, 48, 40)), stitched((32, 32, 32))
    assert not torch.allclose(whole["tumour_free"], x, atol=1e-2)  # the reconstruction is not the input
    for key in whole:
        assert out[key].shape == whole[key].shape == (1, 4, 40, 48, 40), key
        assert torch.allclose(single[key], whole[key], atol=1e-4), key
    assert torch.allclose(out["difference"], x - out["tumour_free"], atol=1e-4)
    assert (out["evidence"] >= 0).all()
    assert torch.isfinite(DareFuseNet.class_logits(out)).all()


def test_backward_reaches_every_parameter():
    net = DareFuseNet(NetConfig(detach_prior=False))
    x, present = _inputs((16, 16, 16))
    out = net(x, present)
    sum(v.mean() for v in out.values()).backward()
    without_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert without_grad == []


def test_config_round_trip():
    config = NetConfig(encoder_channels=(8, 16, 32), attention_heads=2)
    assert NetConfig.from_dict(config.to_dict()) == config


@pytest.mark.slow
def test_forward_time_on_an_adult_brain_box(net):
    """Prints the figure quoted in the README: one forward on 1x4x80x96x80 with 2 threads."""
    torch.set_num_threads(2)
    x, present = _inputs((80, 96, 80))
    with torch.inference_mode():
        net(x, present)
        start = time.perf_counter()
        for _ in range(3):
            net(x, present)
        seconds = (time.perf_counter() - start) / 3
    print(f"\nDareFuseNet {count_parameters(net)} parameters; forward 1x4x80x96x80 on 2 threads: {seconds:.3f} s")
    # A gross regression guard only (idle 2-core machine: ~4 s; up to ~7 s beside two training jobs);
    # benchmarks/bench_segment.py measures speed.
    assert seconds < 20.0


def test_cards_without_the_new_settings_rebuild_the_original_wiring():
    legacy = NetConfig().to_dict()
    del legacy["stem_channels"], legacy["fusion"]
    config = NetConfig.from_dict(legacy)
    assert (config.stem_channels, config.fusion) == (0, "mean")
    model = DareFuseNet(config)
    assert model.stem is None and model.fuse1.mode == "mean" and model.bridge.fuse.mode == "mean"
    assert NetConfig().fusion == "concat" and DareFuseNet(NetConfig()).stem is not None


@pytest.mark.parametrize("mode", ["concat", "mean"])
def test_fusion_ignores_a_missing_branch_and_keeps_both_otherwise(mode):
    from DareFuseSlicerLib.network.blocks import GatedFusion

    torch.manual_seed(0)
    fuse = GatedFusion(8, mode).eval()
    fa, fb = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 4, 4, 4)
    on, off = torch.ones(2, 1), torch.zeros(2, 1)
    with torch.no_grad():
        alone = fuse(fa, fb, on, off)
        assert torch.allclose(alone, fuse(fa, fb * 7 + 3, on, off), atol=1e-6)
        assert not torch.allclose(fuse(fa, fb, on, on), fuse(fa, -fb, on, on), atol=1e-3)
    with pytest.raises(ValueError, match="fusion"):
        GatedFusion(8, "sum")
