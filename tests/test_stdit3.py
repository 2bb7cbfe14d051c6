"""Tests of the OpenSora v1.2 STDiT3 backbone (tora.models.stdit3)."""

import pytest
import torch
from safetensors.torch import save_file

from tora.checkpoints import WeightsMismatchError, load_weights, load_weights_from
from tora.models.layers.embeddings import (
    RotaryEmbedding,
    apply_rotary_embedding,
    sincos_2d_position_embedding,
)
from tora.models.stdit3 import STDiT3, STDiT3Config

# A test-sized STDiT3 (hidden 64, 2 block pairs, patch 2): big enough for every code path.
TEST_SIZE = dict(hidden_size=64, depth=2, num_heads=4, caption_channels=64, model_max_length=16)

BATCH, FRAMES, LATENT_SIZE, CAPTION_TOKENS = 2, 3, 6, 16


def make_model(seed: int = 0, **overrides) -> STDiT3:
    """Tiny STDiT3 in eval mode whose zero-initialised layers are randomised,
    so every block does something and the tests below are not vacuous."""
    torch.manual_seed(seed)
    model = STDiT3(STDiT3Config(**(TEST_SIZE | overrides)))
    with torch.no_grad():
        for block in model.temporal_blocks:
            for layer in (block.attn.proj, block.cross_attn.proj, block.mlp.fc2):
                layer.weight.normal_(std=0.05)
                layer.bias.normal_(std=0.05)
        model.fps_embedder.mlp[2].weight.normal_(std=0.05)
    return model.eval()


def make_inputs(seed: int = 1, batch: int = BATCH, frames: int = FRAMES) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, CAPTION_TOKENS, dtype=torch.long)
    mask[0, 10:] = 0
    return {
        "x": torch.randn(batch, 4, frames, LATENT_SIZE, LATENT_SIZE, generator=generator),
        "timestep": torch.tensor([500.0, 900.0][:batch]),
        "y": torch.randn(batch, 1, CAPTION_TOKENS, 64, generator=generator),
        "mask": mask,
        "fps": torch.full((batch,), 8.0),
        "height": torch.full((batch,), 48.0),
        "width": torch.full((batch,), 48.0),
    }


def test_xl_2_matches_opensora_state_dict_layout():
    with torch.device("meta"):
        model = STDiT3(STDiT3Config())  # the defaults are XL/2's
    state_dict = model.state_dict()
    assert len(state_dict) == 973
    assert sum(p.numel() for p in model.parameters()) == 1_207_643_972
    for key in [
        "spatial_blocks.0.attn.qkv.weight",
        "spatial_blocks.0.attn.q_norm.weight",
        "spatial_blocks.0.cross_attn.kv_linear.weight",
        "temporal_blocks.27.mlp.fc2.bias",
        "temporal_blocks.27.scale_shift_table",
        "x_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "fps_embedder.mlp.0.weight",
        "t_block.1.weight",
        "y_embedder.y_proj.fc1.weight",
        "final_layer.linear.weight",
        "final_layer.scale_shift_table",
    ]:
        assert key in state_dict, key
    assert dict(model.named_buffers()).keys() == {"y_embedder.y_embedding"}
    assert state_dict["y_embedder.y_embedding"].shape == (300, 4096)
    assert state_dict["rope.freqs"].shape == (36,)
    assert not model.rope.freqs.requires_grad
    assert state_dict["x_embedder.proj.weight"].shape == (1152, 4, 1, 2, 2)
    assert state_dict["final_layer.linear.weight"].shape == (32, 1152)
    assert model.out_channels == 8


def test_forward_shape_handles_sizes_not_divisible_by_patch():
    model = make_model()
    inputs = make_inputs()
    inputs["x"] = torch.randn(BATCH, 4, FRAMES, 5, 7)
    with torch.no_grad():
        out = model(**inputs)
    assert out.shape == (BATCH, 8, FRAMES, 5, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_defaults_for_optional_inputs():
    model = make_model()
    inputs = make_inputs()
    with torch.no_grad():
        out = model(inputs["x"], inputs["timestep"], inputs["y"])
        same = model(**{**inputs, "mask": None, "fps": 24.0, "height": 512, "width": 512})
    torch.testing.assert_close(out, same)


def test_temporal_blocks_start_as_identity():
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(**TEST_SIZE))
    block = model.temporal_blocks[1]
    h = torch.randn(BATCH, FRAMES * 9, 64)
    modulation = torch.randn(BATCH, 1, 6 * 64)
    caption = torch.randn(BATCH, CAPTION_TOKENS, 64)
    out = block(h, modulation, caption, None, FRAMES, model.rope.angles(FRAMES))
    torch.testing.assert_close(out, h)


def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    model = make_model(seed=0)
    path = tmp_path / "stdit3.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = make_model(seed=123)
    load_weights_from(fresh, path)
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs), model(**inputs), rtol=0, atol=0)


def test_pt_checkpoint_with_wrapper_and_module_prefix(tmp_path):
    model = make_model(seed=0)
    path = tmp_path / "ema.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    fresh = make_model(seed=5)
    load_weights_from(fresh, path)
    torch.testing.assert_close(fresh.state_dict(), model.state_dict())


def test_mismatched_checkpoint_names_the_keys():
    model = make_model()
    state_dict = model.state_dict()
    del state_dict["temporal_blocks.1.attn.qkv.bias"]
    state_dict["extra.weight"] = torch.zeros(1)
    state_dict["t_block.1.weight"] = torch.zeros(3, 64)
    with pytest.raises(WeightsMismatchError) as error:
        load_weights(make_model(), state_dict, "stdit3.safetensors")
    message = str(error.value)
    assert "stdit3.safetensors does not match STDiT3" in message
    assert "1 missing ['temporal_blocks.1.attn.qkv.bias']" in message
    assert "1 unexpected ['extra.weight']" in message
    assert "t_block.1.weight: file (3, 64), module (384, 64)" in message


def test_fuse_is_called_at_every_block_entry():
    model = make_model()
    inputs = make_inputs()
    calls = []

    def fuse(h, kind, index, T, H, W):
        calls.append((kind, index, T, H, W, tuple(h.shape)))
        return h + 1.0 if (kind, index) == ("temporal", 1) else h

    with torch.no_grad():
        fused = model(**inputs, fuse=fuse)
        plain = model(**inputs)
    tokens = FRAMES * (LATENT_SIZE // 2) ** 2
    assert calls == [
        (kind, index, FRAMES, 3, 3, (BATCH, tokens, 64))
        for index in range(model.depth)
        for kind in ("spatial", "temporal")
    ]
    assert not torch.allclose(fused, plain)


def test_caption_padding_is_ignored():
    model = make_model()
    inputs = make_inputs()
    with torch.no_grad():
        reference = model(**inputs)
        padded_changed = inputs["y"].clone()
        padded_changed[0, :, 10:] = torch.randn(1, 6, 64)
        torch.testing.assert_close(model(**{**inputs, "y": padded_changed}), reference)
        valid_changed = inputs["y"].clone()
        valid_changed[0, :, 3] += 1.0
        changed = model(**{**inputs, "y": valid_changed})
    assert not torch.allclose(changed[0], reference[0])
    torch.testing.assert_close(changed[1], reference[1])


def test_given_frames_use_timestep_zero_modulation():
    model = make_model()
    inputs = make_inputs()
    all_given = torch.zeros(BATCH, FRAMES, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            model(**inputs, x_mask=all_given),
            model(**{**inputs, "timestep": torch.zeros(BATCH)}),
        )
        torch.testing.assert_close(model(**inputs, x_mask=~all_given), model(**inputs))

    # A spatial block mixes nothing across frames, so each frame must match the
    # run where every frame has that frame's modulation.
    block = model.spatial_blocks[0]
    h = torch.randn(BATCH, FRAMES * 9, 64)
    caption = torch.randn(BATCH, CAPTION_TOKENS, 64)
    noised, given = torch.randn(2, BATCH, 1, 6 * 64)
    x_mask = torch.tensor([[False, True, True], [True, False, True]])
    modulation = torch.where(x_mask[:, :, None], noised, given)
    with torch.no_grad():
        mixed = block(h, modulation, caption, None, FRAMES).view(BATCH, FRAMES, 9, 64)
        all_noised = block(h, noised, caption, None, FRAMES).view(BATCH, FRAMES, 9, 64)
        all_given_out = block(h, given, caption, None, FRAMES).view(BATCH, FRAMES, 9, 64)
    torch.testing.assert_close(mixed[x_mask], all_noised[x_mask])
    torch.testing.assert_close(mixed[~x_mask], all_given_out[~x_mask])


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    inputs = make_inputs()
    results = []
    for checkpointing in (False, True):
        model = make_model(class_dropout_prob=0.0).train()
        model.gradient_checkpointing = checkpointing
        out = model(**inputs)
        out.square().mean().backward()
        results.append(
            (out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        )
    (out_plain, grads_plain), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], msg=name)


def test_caption_dropout_uses_null_caption_in_training():
    model = make_model(class_dropout_prob=1.0).train()
    inputs = make_inputs()
    with torch.no_grad():
        dropped = model(**inputs)
        model.eval()
        null = model(**{**inputs, "y": model.null_caption(BATCH)})
    torch.testing.assert_close(dropped, null)


def test_rotary_embedding_rotates_adjacent_channel_pairs():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 5, 8)
    out = apply_rotary_embedding(x, rope.angles(5))
    pairs = torch.view_as_complex(x.reshape(2, 5, 4, 2).contiguous())
    angle = torch.arange(5.0)[:, None] * rope.freqs[None]
    expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle))
    torch.testing.assert_close(out, expected.reshape(2, 5, 8))


def test_position_embedding_layout():
    scale = torch.tensor([1.0, 0.5])
    embedding = sincos_2d_position_embedding(2, 3, 8, scale, base_size=2)
    assert embedding.shape == (2, 6, 8)
    frequencies = torch.tensor([1.0, 0.01])
    row, column = 1, 2  # token 5 of a 2 x 3 grid
    for sample, s in enumerate(scale.tolist()):
        x, y = column / s * 2 / 3, row / s * 2 / 2
        expected = torch.cat(
            [
                torch.sin(x * frequencies),
                torch.cos(x * frequencies),
                torch.sin(y * frequencies),
                torch.cos(y * frequencies),
            ]
        )
        torch.testing.assert_close(embedding[sample, 5], expected)


def test_output_conv_starts_as_the_plain_model_and_trains():
    inputs = make_inputs()
    plain, conv = make_model(), make_model(output_conv=True)
    missing, unexpected = conv.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["output_conv.weight", "output_conv.bias"] and not unexpected
    assert conv.output_conv.weight.shape == (8, 8, 1, 3, 3)  # per frame, over all 8 outputs
    with torch.no_grad():
        assert torch.equal(conv(**inputs), plain(**inputs))
    conv(**inputs)[:, :4].square().mean().backward()
    assert conv.output_conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        conv.output_conv.weight.normal_(std=0.1)
        moved = conv(**inputs) - plain(**inputs)
    assert moved.abs().amax(dim=(0, 1, 3, 4)).min() > 1e-3  # every frame changes
