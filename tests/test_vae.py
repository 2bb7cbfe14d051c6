"""Tests for the causal 3D VAE (tora.models.vae)."""

import io

import pytest
import torch
from omegaconf import OmegaConf

from tora.models.build import instantiate
from tora.models.layers.causal_conv import CausalConv3d
from tora.models.vae import CausalVAE3D, DiagonalGaussian
from tora.utils.config import CONFIG_DIR


def tiny_vae(**overrides) -> CausalVAE3D:
    """The CPU-sized VAE of ``configs/model/vae/tiny.yaml``, with overrides."""
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / "vae" / "tiny.yaml"))
    return instantiate("vae", {**config, **overrides}, "model/vae/tiny.yaml")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """On a small shared CPU, OpenMP threads spin-waiting for busy cores can make
    a 2-thread backward pass ten times slower than a 1-thread one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae() -> CausalVAE3D:
    torch.manual_seed(0)
    return tiny_vae().eval()


def random_video(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=generator) * 2 - 1


@torch.no_grad()
def test_causal_conv_replicates_first_frame_as_past():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, kernel_size=3, stride=(2, 1, 1))
    still = torch.randn(1, 2, 1, 8, 8).expand(1, 2, 9, 8, 8)
    out = conv(still)
    assert out.shape == (1, 3, 5, 8, 8)
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))


@torch.no_grad()
def test_shapes_17_frames(vae):
    video = random_video(2, 17, 64)
    posterior = vae.encode(video)
    assert posterior.mean.shape == (2, 16, 5, 8, 8)
    assert vae.decode(posterior.sample()).shape == (2, 3, 17, 64, 64)
    reconstruction, _ = vae(video)
    assert reconstruction.shape == video.shape
    assert vae.latent_shape(17, 64, 64) == (5, 8, 8)


@torch.no_grad()
def test_single_frame(vae):
    posterior = vae.encode(random_video(1, 1, 32))
    assert posterior.mean.shape == (1, 16, 1, 4, 4)
    assert vae.decode(posterior.mode()).shape == (1, 3, 1, 32, 32)


@torch.no_grad()
def test_encoder_is_causal(vae):
    video = random_video(1, 13, 32)
    latents = vae.encode(video).mode()
    noise = random_video(1, 13, 32, seed=1)
    for j in range(latents.shape[2]):
        future_changed = video.clone()
        future_changed[:, :, 4 * j + 1 :] = noise[:, :, 4 * j + 1 :]
        changed = vae.encode(future_changed).mode()
        torch.testing.assert_close(
            changed[:, :, : j + 1], latents[:, :, : j + 1], rtol=0, atol=1e-6
        )

        window_changed = video.clone()
        window_changed[:, :, 4 * j] = noise[:, :, 4 * j]
        changed = vae.encode(window_changed).mode()
        assert (changed[:, :, j] - latents[:, :, j]).abs().max() > 1e-4
        torch.testing.assert_close(changed[:, :, :j], latents[:, :, :j], rtol=0, atol=1e-6)


@torch.no_grad()
def test_decoder_is_causal(vae):
    latents = torch.randn(1, 16, 4, 4, 4)
    frames = vae.decode(latents)
    for j in range(latents.shape[2]):
        future_changed = latents.clone()
        future_changed[:, :, j + 1 :] = torch.randn_like(latents[:, :, j + 1 :])
        changed = vae.decode(future_changed)
        torch.testing.assert_close(
            changed[:, :, : 4 * j + 1], frames[:, :, : 4 * j + 1], rtol=0, atol=1e-6
        )
        if j + 1 < latents.shape[2]:
            assert (changed[:, :, 4 * j + 1] - frames[:, :, 4 * j + 1]).abs().max() > 1e-4


@torch.no_grad()
@pytest.mark.parametrize(("frames", "chunk_frames"), [(17, 5), (17, 9), (13, 9), (9, 17)])
def test_chunked_encode_matches_full(vae, frames, chunk_frames):
    video = random_video(1, frames, 32)
    full = vae.encode(video)
    chunked = vae.encode(video, chunk_frames=chunk_frames)
    torch.testing.assert_close(chunked.mean, full.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.logvar, full.logvar, rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("chunk_latent_frames", [1, 2, 3])
def test_chunked_decode_matches_full(vae, chunk_latent_frames):
    latents = torch.randn(1, 16, 5, 4, 4)
    full = vae.decode(latents)
    chunked = vae.decode(latents, chunk_latent_frames=chunk_latent_frames)
    assert chunked.shape == (1, 3, 17, 32, 32)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("threads", [1, 2])  # PyTorch picks conv kernels by thread count too
def test_a_clip_gets_the_same_bits_alone_as_in_a_batch(vae, threads):
    """The latent cache keeps a latent by its clip's content, so a clip encoded alone (a
    miss beside a hit) must get exactly the latent a batch gives it; decoding likewise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        video = random_video(2, 17, 64)
        latents = vae.encode_latents(video)
        frames = vae.decode_latents(latents)
        for i in range(2):
            assert torch.equal(vae.encode_latents(video[i : i + 1])[0], latents[i])
            assert torch.equal(vae.decode_latents(latents[i : i + 1])[0], frames[i])
    finally:
        torch.set_num_threads(previous)


def test_kl_reduction():
    zeros = torch.zeros(2, 8, 3, 4, 4)
    assert torch.equal(DiagonalGaussian(zeros).kl(), torch.zeros(2))
    unit_mean = torch.cat([torch.ones(2, 4, 3, 4, 4), torch.zeros(2, 4, 3, 4, 4)], dim=1)
    torch.testing.assert_close(DiagonalGaussian(unit_mean).kl(), torch.full((2,), 0.5))


def test_posterior_sampling_and_logvar_clamp():
    moments = torch.cat([torch.zeros(1, 4, 1, 2, 2), torch.full((1, 4, 1, 2, 2), 100.0)], dim=1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.max() == 20.0
    first = posterior.sample(torch.Generator().manual_seed(3))
    second = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert torch.equal(posterior.mode(), posterior.mean)


@torch.no_grad()
def test_latent_normalisation_round_trip():
    torch.manual_seed(0)
    vae = tiny_vae(latent_channels=4, shortcut="pooled").eval()
    video = random_video(1, 5, 32)
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([2.0, 0.5, 1.0, 4.0])
    vae.set_latent_statistics(mean, std)
    z = vae.encode(video).mode()
    normalised = vae.encode_latents(video)
    torch.testing.assert_close(normalised, (z - mean.view(1, 4, 1, 1, 1)) / std.view(1, 4, 1, 1, 1))
    torch.testing.assert_close(vae.decode_latents(normalised), vae.decode(z), rtol=0, atol=1e-5)

    restored = tiny_vae(latent_channels=4, shortcut="pooled")
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(restored.eval().encode_latents(video), normalised)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 16, 32, 32), "T=16"),
        ((1, 3, 5, 60, 32), "H=60"),
        ((1, 3, 5, 32, 36), "W=36"),
        ((1, 4, 5, 32, 32), "4 channels, expected in_channels=3"),
        ((3, 5, 32, 32), r"\[B, C, T, H, W\]"),
    ],
)
def test_encode_rejects_bad_shapes(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


def test_bad_chunks_and_latents_rejected(vae):
    with pytest.raises(ValueError, match="chunk_frames=8"):
        vae.encode(torch.zeros(1, 3, 17, 32, 32), chunk_frames=8)
    with pytest.raises(ValueError, match="3 channels, expected latent_channels=16"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        vae.set_latent_statistics(torch.zeros(3), torch.ones(3))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    vae = tiny_vae()
    video = random_video(1, 5, 16)

    def gradients() -> torch.Tensor:
        vae.zero_grad()
        reconstruction, posterior = vae(video, sample_posterior=False)
        ((reconstruction - video).pow(2).mean() + posterior.kl().mean()).backward()
        return torch.cat([p.grad.flatten() for p in vae.parameters()])

    plain = gradients()
    vae.gradient_checkpointing = True
    torch.testing.assert_close(gradients(), plain)


def test_overfits_one_clip():
    torch.manual_seed(0)
    vae = tiny_vae()
    ramp = torch.linspace(-1, 1, 32)
    frames = [
        torch.stack(
            [
                ramp.roll(2 * t).expand(32, 32),
                ramp.view(32, 1).expand(32, 32),
                -ramp.roll(t).expand(32, 32).T,
            ]
        )
        for t in range(5)
    ]
    video = torch.stack(frames, dim=1).unsqueeze(0)
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        reconstruction, posterior = vae(video, generator=torch.Generator().manual_seed(0))
        loss = (reconstruction - video).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_frame_rms_norm_keeps_flat_colour_and_bounds_scale():
    from tora.models.vae import FrameRMSNorm

    norm = FrameRMSNorm(3)
    flat = torch.tensor([0.9, 0.3, -0.2]).view(1, 3, 1, 1, 1).expand(2, 3, 2, 4, 4)
    out = norm(flat * 1000.0)
    # the colour direction survives (a GroupNorm would zero a flat frame) ...
    torch.testing.assert_close(
        out[0, :, 0, 0, 0] / out[0, :, 0, 0, 0].norm(),
        flat[0, :, 0, 0, 0] / flat[0, :, 0, 0, 0].norm(),
    )
    # ... at unit RMS per frame, whatever the input scale
    torch.testing.assert_close(out.pow(2).mean(dim=(1, 3, 4)), torch.ones(2, 2))
    torch.testing.assert_close(norm(flat), out)


def test_decoder_stream_does_not_compound_upsample_gains():
    """Scale every decoder upsample conv by 10: without the RMS norm the full-resolution
    stream grows ~300x (the failure a 3000-step VAE showed: 1.4e6); with it, 10x."""
    torch.manual_seed(0)
    z = torch.randn(1, 16, 2, 4, 4)

    def top_stream(upsample_norm: bool, gain: float) -> float:
        torch.manual_seed(0)
        vae = tiny_vae(upsample_norm=upsample_norm).eval()
        captured = {}
        with torch.no_grad():
            for block in vae.decoder.blocks:
                if hasattr(block, "time_factor"):
                    block.conv.weight.mul_(gain)
            handle = vae.decoder.norm_out.register_forward_hook(
                lambda module, inputs, output: captured.setdefault("x", inputs[0])
            )
            vae.decode(z)
            handle.remove()
        return captured["x"].abs().mean().item()

    plain = top_stream(False, 10.0) / top_stream(False, 1.0)
    normed = top_stream(True, 10.0) / top_stream(True, 1.0)
    assert plain > 100, plain
    assert normed < 15, normed


def test_latent_group_layout():
    from tora.models.vae import frames_from_groups, latent_groups

    # 9 frames: frame 0 alone (in every slot), then frames 1-4 and 5-8 -> 3 latent frames
    values = torch.arange(9, dtype=torch.float32).view(1, 1, 9, 1, 1).expand(1, 1, 9, 16, 16)
    groups = latent_groups(values, time_factor=4, space_factor=8)
    assert groups.shape == (1, 1, 4, 3, 2, 2)
    torch.testing.assert_close(
        groups[0, 0, :, :, 0, 0], torch.tensor([[0.0, 1, 5], [0, 2, 6], [0, 3, 7], [0, 4, 8]])
    )
    torch.testing.assert_close(frames_from_groups(groups, space_factor=8), values)


def test_shortcut_membership():
    from tora.models.vae import shortcut_membership

    pooled = shortcut_membership("pooled", latent_channels=4, in_channels=3, time_factor=4)
    # latent channel z carries colour z % 3 of all four frames of its group
    assert pooled.shape == (4, 4, 3)
    torch.testing.assert_close(pooled[:, 0], torch.eye(3)[[0, 1, 2, 0]])
    assert (pooled == pooled[:, :1]).all()
    per_frame = shortcut_membership("per_frame", latent_channels=16, in_channels=3, time_factor=4)
    # four slots of four channels (colours 0, 1, 2, 0), one slot per frame of the group
    frame_of, colour_of = per_frame.nonzero()[:, 1], per_frame.nonzero()[:, 2]
    assert frame_of.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert colour_of.tolist() == [0, 1, 2, 0] * 4
    with pytest.raises(
        ValueError,
        match="latent_channels=8 must be a multiple of the time factor 4 and at least 12",
    ):
        tiny_vae(latent_channels=8)
    with pytest.raises(ValueError, match="shortcut 'frames': one of"):
        tiny_vae(shortcut="frames")


@pytest.mark.parametrize(
    ("shortcut", "latent_channels", "flat_within"),
    [(True, 4, "group"), ("pooled", 16, "group"), ("per_frame", 16, "frame")],
)
def test_shortcut_passes_flat_colour_without_training(shortcut, latent_channels, flat_within):
    """With the networks' output convs zeroed, the shortcut alone reconstructs a clip
    that is flat per frame group (pooled) or per frame (per_frame) exactly: the
    networks only learn the residual."""
    torch.manual_seed(0)
    vae = tiny_vae(shortcut=shortcut, latent_channels=latent_channels).eval()
    with torch.no_grad():
        for conv in (vae.encoder.conv_out, vae.decoder.conv_out):
            conv.weight.zero_()
            conv.bias.zero_()
        colours = torch.rand(9, 3) * 2 - 1
        per_group = colours[[0, 1, 1, 1, 1, 2, 2, 2, 2]]
        per_frame = colours
        for clip_colours, exact in ((per_group, True), (per_frame, flat_within == "frame")):
            clip = clip_colours.T.reshape(1, 3, 9, 1, 1).expand(1, 3, 9, 16, 16)
            error = vae.decode(vae.encode(clip).mode()).sub(clip).abs().max()
            assert (error < 1e-5) == exact, (clip_colours is per_frame, float(error))
    plain = tiny_vae(shortcut=False).eval()
    assert plain.decode(plain.encode(clip).mode()).sub(clip).abs().mean() > 0.1


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_norms_keep_causality_and_chunking(norm):
    torch.manual_seed(0)
    vae = tiny_vae(norm=norm).eval()
    video = random_video(1, 9, 16)
    with torch.no_grad():
        full = vae.encode(video).mode()
        torch.testing.assert_close(vae.encode(video, chunk_frames=5).mode(), full)
        early = vae.encode(video[:, :, :5]).mode()
        torch.testing.assert_close(early, full[:, :, :2])
        decoded = vae.decode(full)
        torch.testing.assert_close(vae.decode(full, chunk_latent_frames=1), decoded)
        torch.testing.assert_close(vae.decode(full[:, :, :2]), decoded[:, :, :5])


def test_channel_norm_keeps_flat_colour():
    from tora.models.vae import ChannelNorm, FrameGroupNorm

    first = torch.tensor([0.9, 0.3, -0.2, 0.5]).view(1, 4, 1, 1, 1).expand(1, 4, 1, 4, 4)
    second = torch.tensor([-0.4, 0.8, 0.1, 0.0]).view(1, 4, 1, 1, 1).expand(1, 4, 1, 4, 4)
    channel, group = ChannelNorm(4), FrameGroupNorm(2, 4)
    # GroupNorm statistics over the frame send both flat frames to the same +-1 pattern ...
    torch.testing.assert_close(group(first).abs(), group(second).abs(), atol=0.01, rtol=0)
    # ... per-position channel statistics keep them apart
    assert (channel(first) - channel(second)).abs().mean() > 0.5
    with pytest.raises(ValueError, match="norm 'batch'"):
        tiny_vae(norm="batch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_norm_is_layer_norm_over_channels_at_each_position(dtype):
    from tora.models.vae import ChannelNorm

    torch.manual_seed(0)
    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x = (torch.randn(2, 6, 3, 5, 4) * 3 + 1).to(dtype).requires_grad_()
    out = norm(x)
    assert out.dtype == dtype and out.is_contiguous()
    # the definition: statistics over C alone, written out by hand, in float32
    xf = x.detach().float().requires_grad_()
    mean = xf.mean(dim=1, keepdim=True)
    var = ((xf - mean) ** 2).mean(dim=1, keepdim=True)
    shape = (1, 6, 1, 1, 1)
    expected = (xf - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(shape) + norm.bias.view(
        shape
    )
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(out.float(), expected.detach(), **tol)
    grad = torch.randn_like(expected)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    if dtype == torch.float32:
        torch.testing.assert_close(x.grad, xf.grad, atol=1e-4, rtol=1e-4)
