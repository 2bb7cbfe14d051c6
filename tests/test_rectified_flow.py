"""Rectified flow: noising, targets, timestep sampling and shift, loss, the Euler step."""

import pytest
import torch

from tora.diffusion import RectifiedFlow, shift_timesteps

SHAPE = (2, 4, 3, 4, 4)  # [B, C, T, H, W] latents


def exact_velocity_model(x0: torch.Tensor):
    """The true velocity noise - x0 of the straight path through a known x0: (x_t - x0) / t."""

    def model_fn(x, timestep, **kwargs):
        t = timestep.reshape(-1, 1, 1, 1, 1)
        return (x - torch.cat([x0] * (x.shape[0] // x0.shape[0]))) / t

    return model_fn


def test_add_noise_endpoints_and_velocity_target():
    flow = RectifiedFlow()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    ones, zeros = torch.ones(SHAPE[0]), torch.zeros(SHAPE[0])
    torch.testing.assert_close(flow.add_noise(x0, noise, zeros), x0)
    torch.testing.assert_close(flow.add_noise(x0, noise, ones), noise)
    torch.testing.assert_close(flow.add_noise(x0, noise, ones / 4), 0.75 * x0 + 0.25 * noise)
    torch.testing.assert_close(flow.velocity(x0, noise), noise - x0)
    opensora = RectifiedFlow(prediction="data_minus_noise")
    torch.testing.assert_close(opensora.velocity(x0, noise), x0 - noise)


def test_shift_is_identity_at_one_monotone_and_fixes_endpoints():
    t = torch.linspace(0, 1, 101)
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)
    for shift in (0.5, 3.0):
        shifted = shift_timesteps(t, shift)
        assert (shifted.diff() > 0).all()
        assert shifted[0] == 0 and shifted[-1] == 1
    assert (shift_timesteps(t[1:-1], 3.0) > t[1:-1]).all()


def test_timestep_shift_follows_resolution_and_length():
    flow = RectifiedFlow(transform_scale=1.0)
    # 64 x 64 latents = 512 x 512 pixels: only the frame count shifts.
    assert flow.timestep_shift((1, 4, 1, 64, 64)) == pytest.approx(1.0)
    assert flow.timestep_shift((1, 4, 5, 64, 64)) == pytest.approx(5**0.5)
    assert flow.timestep_shift((1, 4, 1, 32, 32)) == pytest.approx(0.5)
    assert RectifiedFlow(transform_scale=2.0).timestep_shift((1, 4, 1, 64, 64)) == pytest.approx(
        2.0
    )


def test_logit_normal_and_uniform_timesteps():
    generator = torch.Generator().manual_seed(0)
    t = RectifiedFlow(sample_method="logit-normal").sample_timesteps(20000, generator)
    assert t.shape == (20000,)
    assert ((t > 0) & (t < 1)).all()
    assert abs(t.median().item() - 0.5) < 0.02
    # logit-normal concentrates around the middle: fewer samples in the tails than uniform.
    assert ((t < 0.1) | (t > 0.9)).float().mean() < 0.15
    u = RectifiedFlow(sample_method="uniform").sample_timesteps(20000, generator)
    assert ((u >= 0) & (u < 1)).all()
    assert ((u < 0.1) | (u > 0.9)).float().mean() > 0.18
    with pytest.raises(ValueError, match="logit-normal, uniform"):
        RectifiedFlow(sample_method="beta")


def test_training_loss_is_zero_for_the_exact_velocity_and_mse_otherwise():
    flow = RectifiedFlow()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([0.3, 0.8])
    out = flow.training_losses(exact_velocity_model(x0), x0, t=t, noise=noise)
    assert out["loss"].shape == (2,)
    torch.testing.assert_close(out["loss"], torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["t"], t)

    zeros = flow.training_losses(
        lambda x, timestep, **kw: torch.zeros_like(x), x0, t=t, noise=noise
    )
    torch.testing.assert_close(zeros["loss"], (noise - x0).pow(2).mean(dim=(1, 2, 3, 4)))


def test_training_loss_passes_timesteps_and_conditions_and_uses_first_channels():
    flow = RectifiedFlow()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    seen = {}

    def model_fn(x, timestep, y, mask):
        seen.update(timestep=timestep, y=y, mask=mask)
        velocity = exact_velocity_model(x0)(x, timestep)
        return torch.cat([velocity, torch.full_like(x, 100.0)], dim=1)  # pred_sigma channels

    t = torch.tensor([0.25, 0.5])
    out = flow.training_losses(model_fn, x0, {"y": "text", "mask": "m"}, t=t, noise=noise)
    torch.testing.assert_close(out["loss"], torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["timestep"], t)
    assert seen["y"] == "text" and seen["mask"] == "m"


def test_training_samples_shifted_timesteps_when_none_given():
    flow = RectifiedFlow(use_timestep_transform=True)
    x0 = torch.zeros(64, 1, 5, 64, 64)  # shift sqrt(5)
    t = flow.training_losses(lambda x, timestep: x, x0, generator=torch.Generator().manual_seed(0))[
        "t"
    ]
    assert t.median() > 0.6  # logit-normal median 0.5 shifted: 2.236 * .5 / (1 + 1.236 * .5) = 0.69


def test_training_frame_mask_keeps_given_frames_clean_and_out_of_the_loss():
    flow = RectifiedFlow()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    frame_mask = torch.tensor([[False, True, True], [False, False, True]])
    seen = {}

    def model_fn(x, timestep, x_mask):
        seen.update(x=x, x_mask=x_mask)
        velocity = exact_velocity_model(x0)(x, timestep)
        return torch.where(x_mask[:, None, :, None, None], velocity, torch.full_like(x, 1e3))

    out = flow.training_losses(
        model_fn, x0, t=torch.tensor([0.5, 0.7]), noise=noise, frame_mask=frame_mask
    )
    torch.testing.assert_close(out["loss"], torch.zeros(2), atol=1e-5, rtol=0)
    assert torch.equal(seen["x_mask"], frame_mask)
    given = ~frame_mask[:, None, :, None, None].expand(SHAPE)
    assert torch.equal(seen["x"][given], x0[given])
    assert not torch.allclose(seen["x"][~given], x0[~given])


def euler(flow: RectifiedFlow, model_fn, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """The sampling ODE integrated with the scheduler's timesteps and ``step`` alone."""
    x = noise
    times = flow.sampling_timesteps(noise.shape, steps)
    for t_now, t_next in zip(times[:-1], times[1:]):
        x = flow.step(x, model_fn(x, torch.full((x.shape[0],), t_now)), t_now, t_next)
    return x


@pytest.mark.parametrize("use_timestep_transform", [False, True])
def test_euler_steps_recover_x0_of_a_straight_path(use_timestep_transform):
    flow = RectifiedFlow(use_timestep_transform=use_timestep_transform)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    torch.testing.assert_close(euler(flow, exact_velocity_model(x0), noise, 1), x0)
    many_steps = euler(flow, exact_velocity_model(x0), noise, 7)
    torch.testing.assert_close(many_steps, x0, atol=1e-4, rtol=1e-4)


def test_euler_steps_with_opensora_sign():
    flow = RectifiedFlow(prediction="data_minus_noise")
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    model = exact_velocity_model(x0)
    sample = euler(flow, lambda x, t: -model(x, t), noise, 3)
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=1e-4)
