"""OpenSora v1.2's VAE (tora.models.opensora_vae): the release's state-dict layout at full
size, OpenSora's own outputs at a tiny size, its frame rule and its chunking."""

import pytest
import torch
from omegaconf import OmegaConf
from opensora_vae_reference import (
    REFERENCE,
    SAMPLE_SEED,
    deterministic_weights,
    reference_video,
    tiny_vae_config,
    write_release_folder,
)
from safetensors.torch import load_file

from tora.checkpoints import WeightsMismatchError
from tora.models.build import build_vae
from tora.models.opensora_vae import OpenSoraVAE
from tora.utils.config import CONFIG_DIR

# OpenSora v1.2.0's VideoAutoencoderPipeline(OpenSoraVAE_V1_2): the SD-XL AutoencoderKL
# (PixArt-Sigma's copy) and VAE_Temporal_SD.
RELEASE_ENTRIES, SPATIAL_ENTRIES, TEMPORAL_ENTRIES = 517, 248, 267
RELEASE_PARAMETERS, SPATIAL_PARAMETERS, TEMPORAL_PARAMETERS = (
    393_341_007,
    83_653_863,
    309_687_144,
)


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    config = tiny_vae_config()
    config.pop("_target_")
    return config


@pytest.fixture(scope="module")
def tiny_vae(tiny_config) -> OpenSoraVAE:
    vae = OpenSoraVAE(**tiny_config).eval()
    vae.load_state_dict(deterministic_weights(vae.state_dict()))
    return vae


def full_size_vae() -> OpenSoraVAE:
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model/vae/opensora_v1_2.yaml"))
    config.pop("_target_")
    with torch.device("meta"):
        return OpenSoraVAE(**config)


def test_full_size_matches_the_release_layout():
    vae = full_size_vae()
    state_dict = vae.state_dict()
    assert len(state_dict) == RELEASE_ENTRIES
    assert sum(k.startswith("spatial_vae.module.") for k in state_dict) == SPATIAL_ENTRIES
    assert sum(k.startswith("temporal_vae.") for k in state_dict) == TEMPORAL_ENTRIES
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(vae) == RELEASE_PARAMETERS
    assert count(vae.spatial_vae) == SPATIAL_PARAMETERS
    assert count(vae.temporal_vae) == TEMPORAL_PARAMETERS
    shapes = {
        "scale": (1, 4, 1, 1, 1),
        "shift": (1, 4, 1, 1, 1),
        "spatial_vae.module.encoder.conv_in.weight": (128, 3, 3, 3),
        "spatial_vae.module.encoder.mid_block.attentions.0.to_q.weight": (512, 512),
        "spatial_vae.module.quant_conv.weight": (8, 8, 1, 1),
        "spatial_vae.module.decoder.up_blocks.3.resnets.2.conv2.weight": (128, 128, 3, 3),
        "temporal_vae.encoder.conv_in.conv.weight": (128, 4, 3, 3, 3),
        "temporal_vae.encoder.block_res_blocks.1.0.conv3.conv.weight": (256, 128, 1, 1, 1),
        "temporal_vae.encoder.block_res_blocks.3.3.norm2.weight": (512,),
        "temporal_vae.encoder.conv_blocks.1.conv.weight": (256, 256, 3, 3, 3),
        "temporal_vae.encoder.conv_blocks.2.conv.bias": (256,),
        "temporal_vae.encoder.res_blocks.3.conv2.conv.weight": (512, 512, 3, 3, 3),
        "temporal_vae.encoder.conv2.conv.weight": (8, 512, 1, 1, 1),
        "temporal_vae.quant_conv.conv.weight": (8, 8, 1, 1, 1),
        "temporal_vae.post_quant_conv.conv.weight": (4, 4, 1, 1, 1),
        "temporal_vae.decoder.conv1.conv.weight": (512, 4, 3, 3, 3),
        "temporal_vae.decoder.conv_blocks.1.conv.weight": (512, 256, 3, 3, 3),
        "temporal_vae.decoder.conv_blocks.2.conv.weight": (1024, 512, 3, 3, 3),
        "temporal_vae.decoder.block_res_blocks.0.0.conv3.conv.weight": (128, 256, 1, 1, 1),
        "temporal_vae.decoder.conv_out.conv.weight": (4, 128, 3, 3, 3),
    }
    assert {key: tuple(state_dict[key].shape) for key in shapes} == shapes
    for part in ("encoder", "decoder"):  # level 0 keeps the frame rate: no conv
        assert f"temporal_vae.{part}.conv_blocks.0.conv.weight" not in state_dict
    assert (vae.latent_channels, vae.spatial_factor, vae.temporal_factor) == (4, 8, 4)


def test_matches_opensora_own_outputs(tiny_config, tiny_vae, tmp_path):
    """Loaded from a release-layout folder by the builder; the references are OpenSora's
    own code's outputs for the same weights (tests/data/README.md)."""
    folder = write_release_folder(tiny_vae.state_dict(), tmp_path / "OpenSora-VAE-v1.2")
    vae = build_vae({"_target_": "tora.models.opensora_vae.OpenSoraVAE", **tiny_config}, folder)
    reference = load_file(REFERENCE)
    x = reference_video()
    with torch.no_grad():
        latents = vae.eval().encode_latents(x, sample=False)
        decoded = vae.decode_latents(reference["latents_mean"], num_frames=x.shape[2])
        torch.manual_seed(SAMPLE_SEED)
        sampled = vae.encode_latents(x, sample=True)
    torch.testing.assert_close(latents, reference["latents_mean"], atol=1e-5, rtol=1e-5)
    # |decoded| reaches 4.7: float32 summation order alone moves it by about 1e-5.
    torch.testing.assert_close(decoded, reference["decoded"], atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(sampled, reference["latents_sample"], atol=1e-5, rtol=1e-5)


def test_release_file_is_loaded_strictly(tiny_config, tiny_vae, tmp_path):
    weights = dict(tiny_vae.state_dict())
    del weights["temporal_vae.decoder.conv_out.conv.bias"]
    folder = write_release_folder(weights, tmp_path / "broken")
    with pytest.raises(WeightsMismatchError, match="1 missing.*conv_out.conv.bias"):
        build_vae({"_target_": "tora.models.opensora_vae.OpenSoraVAE", **tiny_config}, folder)


@pytest.mark.parametrize(
    "frames, latent_frames",
    [(1, 1), (4, 1), (5, 2), (16, 4), (17, 5), (18, 6), (34, 10), (49, 14), (51, 15), (102, 30)],
)
def test_frame_rule(tiny_vae, frames, latent_frames):
    """5 * (T // 17) + ceil((T % 17) / 4): OpenSora's VideoAutoencoderPipeline.get_latent_size."""
    assert tiny_vae.latent_shape(frames, 240, 432) == (latent_frames, 30, 54)


def test_latent_shape_names_a_bad_size(tiny_vae):
    with pytest.raises(ValueError, match="W=426, expected a multiple of 8"):
        tiny_vae.latent_shape(51, 240, 426)
    with pytest.raises(ValueError, match="T=0"):
        tiny_vae.latent_shape(0, 240, 432)


@pytest.mark.parametrize("frames", [17, 34, 51])
def test_encode_decode_shapes(tiny_vae, frames):
    x = torch.rand(1, 3, frames, 16, 16) * 2 - 1
    with torch.no_grad():
        z = tiny_vae.encode_latents(x, sample=False)
        video = tiny_vae.decode_latents(z)
    assert z.shape == (1, 4, 5 * frames // 17, 2, 2)
    assert video.shape == x.shape


def test_chunks_are_encoded_and_decoded_on_their_own(tiny_vae):
    """Each 17-frame chunk is a clip of its own (GroupNorm statistics span a whole chunk):
    a 51-frame clip gives its three chunks' latents; changing a frame of the second chunk
    changes that chunk's latents only; decoding is chunk by chunk too."""
    x = torch.rand(1, 3, 51, 16, 16) * 2 - 1
    with torch.no_grad():
        whole = tiny_vae.encode_latents(x, sample=False)
        chunks = [tiny_vae.encode_latents(c, sample=False) for c in x.split(17, dim=2)]
        torch.testing.assert_close(whole, torch.cat(chunks, dim=2), atol=1e-5, rtol=1e-5)
        changed = x.clone()
        changed[:, :, 20] = 0
        latents = tiny_vae.encode_latents(changed, sample=False)
        torch.testing.assert_close(latents[:, :, :5], whole[:, :, :5], atol=0, rtol=0)
        torch.testing.assert_close(latents[:, :, 10:], whole[:, :, 10:], atol=0, rtol=0)
        assert not torch.allclose(latents[:, :, 5:10], whole[:, :, 5:10])
        video = tiny_vae.decode_latents(whole)
        parts = [tiny_vae.decode_latents(z) for z in whole.split(5, dim=2)]
        torch.testing.assert_close(video, torch.cat(parts, dim=2), atol=1e-5, rtol=1e-5)


def test_spatial_micro_batches_change_nothing(tiny_config, tiny_vae):
    whole = OpenSoraVAE(**(tiny_config | {"micro_batch_size": None})).eval()
    whole.load_state_dict(tiny_vae.state_dict())
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            whole.encode_latents(x, sample=False), tiny_vae.encode_latents(x, sample=False)
        )


def test_decode_needs_a_frame_count_that_fits(tiny_vae):
    """13 to 16 frames give 4 latent frames; 4 latent frames decode to 16 unless told."""
    z = torch.randn(1, 4, 4, 2, 2)
    with torch.no_grad():
        assert tiny_vae.decode_latents(z).shape[2] == 16
        assert tiny_vae.decode_latents(z, num_frames=14).shape[2] == 14
    with pytest.raises(ValueError, match="num_frames=12 gives 3 latent frames.*have 4"):
        tiny_vae.decode_latents(z, num_frames=12)


def test_posterior_samples_or_means(tiny_config, tiny_vae):
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(tiny_vae.encode_latents(x), tiny_vae.encode_latents(x))
        deterministic = OpenSoraVAE(**(tiny_config | {"sample_posterior": False})).eval()
        deterministic.load_state_dict(tiny_vae.state_dict())
        assert torch.equal(deterministic.encode_latents(x), deterministic.encode_latents(x))


def test_freeze_spatial(tiny_config):
    frozen, trained = (
        OpenSoraVAE(**(tiny_config | {"freeze_spatial": flag})) for flag in (True, False)
    )
    assert not any(p.requires_grad for p in frozen.spatial_vae.parameters())
    assert all(p.requires_grad for p in frozen.temporal_vae.parameters())
    assert all(p.requires_grad for p in trained.parameters())
