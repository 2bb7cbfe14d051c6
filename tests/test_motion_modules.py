"""Trajectory Extractor, Motion-guidance Fusers, MotionGuidance and motion compression."""

import pytest
import torch
from torch import nn

from tora.models.fusers import (
    FUSERS,
    AdaptiveNormFuser,
    MotionGuidance,
    build_fuser,
    fuser_blocks,
)
from tora.models.motion_encoders import (
    AvgPoolMotionEncoder,
    FrameSamplingMotionEncoder,
    VAEMotionEncoder,
    build_motion_encoder,
)
from tora.models.trajectory_extractor import TrajectoryExtractor

HIDDEN, FEATURE = 64, 32
B, T, HT, WT = 2, 3, 4, 5  # token grid of latents [B, 4, 3, 8, 10]

FUSER_CONFIGS = [
    ("adaptive_norm", {}),
    ("adaptive_norm", {"normalize_hidden": True}),
    ("channel_concat", {}),
    ("cross_attn", {"num_heads": 4}),
]


def test_trajectory_extractor_makes_one_feature_per_block_on_the_token_grid():
    extractor = TrajectoryExtractor(in_channels=4, feature_channels=FEATURE, num_features=3)
    features = extractor(torch.randn(B, 4, T, 2 * HT, 2 * WT))
    assert len(features) == 3
    for feature in features:
        assert feature.shape == (B, FEATURE, T, HT, WT)
    assert not torch.allclose(features[0], features[1])


def test_trajectory_extractor_patchifies_per_frame():
    """Frames are folded into the batch: changing one latent frame changes only its features."""
    extractor = TrajectoryExtractor(in_channels=4, feature_channels=FEATURE, num_features=2)
    latents = torch.randn(1, 4, T, 8, 8)
    changed = latents.clone()
    changed[:, :, 1] += 1.0
    before, after = extractor(latents)[-1], extractor(changed)[-1]
    assert torch.equal(before[:, :, [0, 2]], after[:, :, [0, 2]])
    assert not torch.allclose(before[:, :, 1], after[:, :, 1])


def test_trajectory_extractor_rejects_odd_grids():
    with pytest.raises(ValueError, match="patch size"):
        TrajectoryExtractor(feature_channels=FEATURE, num_features=1)(torch.randn(1, 4, 3, 7, 8))


@pytest.mark.parametrize("kind, kwargs", FUSER_CONFIGS)
def test_fuser_is_identity_at_init_and_learns(kind, kwargs):
    torch.manual_seed(0)
    fuser = build_fuser(kind, HIDDEN, FEATURE, **kwargs)
    h = torch.randn(B, T * HT * WT, HIDDEN)
    feature = torch.randn(B, FEATURE, T, HT, WT)
    assert torch.equal(fuser(h, feature, T, HT, WT), h)

    optimizer = torch.optim.Adam(fuser.parameters(), lr=1e-2)
    target = torch.randn_like(h)
    (fuser(h, feature, T, HT, WT) * target).sum().backward()
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(fuser(h, feature, T, HT, WT), h)


@pytest.mark.parametrize("kind, kwargs", FUSER_CONFIGS)
def test_fuser_output_depends_on_the_motion_feature(kind, kwargs):
    torch.manual_seed(0)
    fuser = build_fuser(kind, HIDDEN, FEATURE, **kwargs)
    for parameter in fuser.parameters():
        nn.init.normal_(parameter, std=0.1)
    h = torch.randn(B, T * HT * WT, HIDDEN)
    feature = torch.randn(B, FEATURE, T, HT, WT)
    assert not torch.allclose(fuser(h, feature, T, HT, WT), fuser(h, feature + 1, T, HT, WT))


def test_fuser_rejects_mismatched_grid():
    fuser = AdaptiveNormFuser(HIDDEN, FEATURE)
    with pytest.raises(ValueError, match="token grid"):
        fuser(
            torch.randn(B, T * HT * WT, HIDDEN), torch.randn(B, FEATURE, T, HT, WT + 1), T, HT, WT
        )


def test_build_fuser_names_the_valid_options():
    with pytest.raises(ValueError, match="'gated'.*adaptive_norm, channel_concat, cross_attn"):
        build_fuser("gated", HIDDEN, FEATURE)
    assert set(FUSERS) == {"adaptive_norm", "channel_concat", "cross_attn"}


def test_fuser_placements():
    assert fuser_blocks("temporal", 3) == [("temporal", 0), ("temporal", 1), ("temporal", 2)]
    assert fuser_blocks("spatial", 2) == [("spatial", 0), ("spatial", 1)]
    assert fuser_blocks("both", 2) == [
        ("spatial", 0),
        ("temporal", 0),
        ("spatial", 1),
        ("temporal", 1),
    ]
    with pytest.raises(ValueError, match="temporal, spatial, both"):
        fuser_blocks("cross", 2)


def test_motion_guidance_fuse_callback():
    torch.manual_seed(0)
    guidance = MotionGuidance(HIDDEN, depth=2, placement="temporal", feature_channels=FEATURE)
    assert sorted(guidance.fusers) == ["temporal_0", "temporal_1"]
    features = guidance.extract(torch.randn(B, 4, T, 2 * HT, 2 * WT))
    assert len(features) == 2
    for fuser in guidance.fusers.values():
        for parameter in fuser.parameters():
            nn.init.normal_(parameter, std=0.1)
    fuse = guidance.make_fuse_callback(features)
    h = torch.randn(B, T * HT * WT, HIDDEN)
    assert fuse(h, "spatial", 0, T, HT, WT) is h
    fused = fuse(h, "temporal", 1, T, HT, WT)
    torch.testing.assert_close(fused, guidance.fusers["temporal_1"](h, features[1], T, HT, WT))
    assert not torch.allclose(fused, h)
    with pytest.raises(ValueError, match="expected 2"):
        guidance.make_fuse_callback(features[:1])


def test_motion_guidance_both_placements_build_one_feature_per_block():
    guidance = MotionGuidance(
        HIDDEN,
        depth=2,
        placement="both",
        fuser="cross_attn",
        feature_channels=FEATURE,
        fuser_kwargs={"num_heads": 4},
    )
    assert guidance.extractor.num_features == 4
    assert sorted(guidance.fusers) == ["spatial_0", "spatial_1", "temporal_0", "temporal_1"]


def constant_frames(frames: int, height: int = 16, width: int = 24) -> torch.Tensor:
    """Motion RGB ``[1, 3, frames, H, W]`` whose frame i is the constant i."""
    return (
        torch.arange(frames, dtype=torch.float32)
        .reshape(1, 1, frames, 1, 1)
        .expand(1, 3, frames, height, width)
    )


@pytest.mark.parametrize("kind", ["avg_pool", "frame_sampling"])
def test_pooling_encoders_match_the_video_latent_grid(kind):
    encoder = build_motion_encoder(kind, out_channels=4)
    latents = encoder.encode(torch.rand(2, 3, 9, 16, 24) * 2 - 1)
    assert latents.shape == (2, 4, 3, 2, 3)
    assert torch.equal(latents[:, 3], latents[:, 0])
    with pytest.raises(ValueError, match="4k\\+1"):
        encoder.encode(torch.rand(2, 3, 8, 16, 24))


def test_frame_sampling_picks_frames_0_4_8():
    latents = FrameSamplingMotionEncoder(out_channels=3).encode(constant_frames(9))
    assert latents[0, 0, :, 0, 0].tolist() == [0.0, 4.0, 8.0]


def test_avg_pool_is_causal_in_time_and_averages_space():
    latents = AvgPoolMotionEncoder(out_channels=3).encode(constant_frames(9))
    assert latents[0, 0, :, 0, 0].tolist() == [0.0, 2.5, 6.5]
    checker = torch.zeros(1, 3, 1, 8, 8)
    checker[..., ::2, :] = 1.0
    assert AvgPoolMotionEncoder(out_channels=3).encode(checker).flatten().tolist() == [0.5] * 3


class FakeVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def encode_latents(self, x):
        return self.scale * x[:, :, ::4, ::8, ::8].repeat(1, 2, 1, 1, 1)[:, :4]


def test_vae_motion_encoder_is_frozen_and_gradient_free():
    encoder = build_motion_encoder("motion_vae", vae=FakeVAE())
    encoder.train()
    assert not encoder.vae.training
    assert not any(p.requires_grad for p in encoder.parameters())
    latents = encoder.encode(torch.randn(1, 3, 9, 16, 16, requires_grad=True))
    assert latents.shape == (1, 4, 3, 2, 2) and not latents.requires_grad
    assert isinstance(encoder, VAEMotionEncoder)


def test_build_motion_encoder_errors():
    with pytest.raises(ValueError, match="motion_vae, video_vae, avg_pool, frame_sampling"):
        build_motion_encoder("optical")
    with pytest.raises(ValueError, match="'video_vae' needs .*vae="):
        build_motion_encoder("video_vae")
