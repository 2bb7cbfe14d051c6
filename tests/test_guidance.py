"""The pipeline's denoising loop and guidance arithmetic, with hand-checkable models."""

import pytest
import torch
from torch import nn

from tora.diffusion import RectifiedFlow
from tora.inference import Conditioning, GenerationConfig, TextCondition, ToraPipeline
from tora.inference.pipeline import duplicate_for_cfg

SHAPE = (2, 4, 3, 4, 4)  # [B, C, T, H, W] latents


class Components:
    """Just what ``ToraPipeline.denoise`` uses: the diffusion process and ``predict``."""

    def __init__(self, predict):
        self.predict = predict
        self.flow = RectifiedFlow()

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict()


def denoise(model_fn, noise, text, null, conditioning=None, **settings) -> torch.Tensor:
    pipeline = ToraPipeline(Components(model_fn))
    return pipeline.denoise(
        noise, text, null, conditioning or Conditioning(), GenerationConfig(**settings)
    )


def text_dependent_model(seen: list | None = None):
    """Velocity = x + mean of y per sample (+ motion): linear, so CFG is checkable by hand."""

    def model_fn(x, timestep, y, mask, motion_features=None, **extra):
        if seen is not None:
            seen.append(dict(x=x, timestep=timestep, y=y, mask=mask, **extra))
            seen[-1]["motion_features"] = motion_features
        motion = 0.0 if motion_features is None else motion_features[0]
        return x + y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1, 1) + motion

    return model_fn


def test_cfg_scale_one_equals_conditional_only():
    noise = torch.randn(SHAPE)
    text = TextCondition(torch.randn(2, 1, 5, 8), torch.ones(2, 5, dtype=torch.long))
    null = TextCondition(torch.randn(2, 1, 5, 8), text.mask)
    guided = denoise(text_dependent_model(), noise, text, null, cfg_scale=1.0, steps=4)
    conditional = denoise(text_dependent_model(), noise, text, text, cfg_scale=7.0, steps=4)
    torch.testing.assert_close(guided, conditional)


def test_cfg_extrapolates_from_null_to_text_in_one_step():
    noise = torch.randn(SHAPE)
    text = TextCondition(torch.full((2, 1, 5, 8), 1.0))
    null = TextCondition(torch.full((2, 1, 5, 8), -1.0))
    sample = denoise(text_dependent_model(), noise, text, null, cfg_scale=3.0, steps=1)
    v = (noise - 1.0) + 3.0 * 2.0  # v_null + s * (v_text - v_null)
    torch.testing.assert_close(sample, noise - v)


def test_motion_in_both_branches_runs_one_doubled_batch():
    noise = torch.randn(SHAPE)
    text = TextCondition(torch.randn(2, 1, 5, 8), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]))
    null = TextCondition(torch.randn(2, 1, 5, 8), torch.tensor([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]))
    features = [torch.randn(SHAPE), torch.randn(2, 16, 3, 2, 2)]
    conditioning = Conditioning(extra={"fps": torch.tensor([8.0, 8.0])}, motion_features=features)
    seen = []
    denoise(
        text_dependent_model(seen),
        noise,
        text,
        null,
        conditioning,
        steps=2,
        motion_in_guidance=False,
    )
    assert len(seen) == 2  # one call per step
    call = seen[0]
    for got, feature in zip(call["motion_features"], features, strict=True):
        assert torch.equal(got, torch.cat([feature, feature]))
    assert torch.equal(call["fps"], torch.full((4,), 8.0))
    assert torch.equal(call["y"], torch.cat([text.y, null.y]))
    assert torch.equal(call["mask"], torch.cat([text.mask, null.mask]))
    assert torch.equal(call["x"][:2], call["x"][2:])
    torch.testing.assert_close(call["timestep"], torch.ones(4))


def test_motion_in_guidance_leaves_it_out_of_the_unconditional_branch():
    """v = v_null(no motion) + s (v_text(motion) - v_null(no motion)); two scales:
    v_null + s (v_text_only - v_null) + m (v_text - v_text_only)."""
    noise = torch.randn(SHAPE)
    text = TextCondition(torch.full((2, 1, 5, 8), 1.0))
    null = TextCondition(torch.full((2, 1, 5, 8), -1.0))
    conditioning = Conditioning(motion_features=[torch.full(SHAPE, 0.5)])

    def one_step(**settings):
        return denoise(
            text_dependent_model(),
            noise,
            text,
            null,
            conditioning,
            cfg_scale=3.0,
            steps=1,
            **settings,
        )

    both = one_step(motion_in_guidance=False)
    torch.testing.assert_close(both, noise - ((noise + 0.5 - 1.0) + 3.0 * 2.0))
    guided = one_step(motion_in_guidance=True)
    torch.testing.assert_close(guided, noise - ((noise - 1.0) + 3.0 * (2.0 + 0.5)))
    separate = one_step(motion_guidance_scale=5.0)
    torch.testing.assert_close(separate, noise - ((noise - 1.0) + 3.0 * 2.0 + 5.0 * 0.5))
    # A motion scale equal to the text scale is joint guidance.
    torch.testing.assert_close(one_step(motion_guidance_scale=3.0), guided)


def test_without_motion_the_guidance_settings_change_nothing():
    noise = torch.randn(SHAPE)
    text = TextCondition(torch.full((2, 1, 5, 8), 1.0))
    null = TextCondition(torch.full((2, 1, 5, 8), -1.0))
    plain = denoise(text_dependent_model(), noise, text, null, steps=2, motion_in_guidance=False)
    for settings in ({"motion_in_guidance": True}, {"motion_guidance_scale": 5.0}):
        torch.testing.assert_close(
            denoise(text_dependent_model(), noise, text, null, steps=2, **settings), plain
        )


def test_sampling_holds_given_frames():
    noise, x_given = torch.randn(SHAPE), torch.randn(SHAPE)
    frame_mask = torch.tensor([[False, True, True], [False, False, True]])
    text = TextCondition(torch.randn(2, 1, 5, 8))
    seen = []
    conditioning = Conditioning(frame_mask=frame_mask, x_given=x_given)
    sample = denoise(text_dependent_model(seen), noise, text, text, conditioning, steps=3)
    given = ~frame_mask[:, None, :, None, None].expand(SHAPE)
    assert torch.equal(sample[given], x_given[given])
    assert not torch.allclose(sample[~given], x_given[~given])
    assert torch.equal(seen[0]["x_mask"], torch.cat([frame_mask, frame_mask]))
    with pytest.raises(ValueError, match="x_given"):
        denoise(text_dependent_model(), noise, text, text, Conditioning(frame_mask=frame_mask))


def test_duplicate_for_cfg_keeps_structure():
    value = {"a": torch.ones(2, 3), "b": (torch.zeros(1),), "c": 5}
    doubled = duplicate_for_cfg(value)
    assert doubled["a"].shape == (4, 3) and doubled["b"][0].shape == (2,) and doubled["c"] == 5
