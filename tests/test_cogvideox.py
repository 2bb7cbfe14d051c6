"""The released Tora on CogVideoX: tiny models saved in each released layout (as the release
saves them) and loaded through ``load_official_tora``, numerics against diffusers' own
``CogVideoXTransformer3DModel``, the 5B key and parameter counts, and the CogVideoX
diffusion process in the inference pipeline."""

from __future__ import annotations

import json
import math
import random
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXTransformer3DModel,
)
from einops import rearrange
from safetensors.torch import save_file

from tora.checkpoints import WeightsMismatchError
from tora.diffusion import CogVideoXDiffusion
from tora.inference import Conditioning, GenerationConfig, TextCondition, ToraPipeline
from tora.models.build import ToraComponents
from tora.models.cogvideox import (
    CogVideoXBackbone,
    CogVideoXMotionGuidance,
    CogVideoXTora,
    find_layout,
    load_official_tora,
)

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=32,
    in_channels=16,
    out_channels=16,
    time_embed_dim=32,
    text_embed_dim=32,
    num_layers=2,
    max_text_seq_length=8,
    use_rotary_positional_embeddings=True,
)  # sample sizes: CogVideoX 1.0's (60 x 90 latents), what a SAT file implies
FEATURES = 32
SAT = "model.diffusion_model."
# Our fuser module names -> the release's (MGF).
RELEASE_FUSER = {
    "gamma.spatial": "flow_gamma_spatial",
    "gamma.temporal": "flow_gamma_temporal",
    "beta.spatial": "flow_beta_spatial",
    "beta.temporal": "flow_beta_temporal",
    "norm": "flow_cond_norm",
}
# diffusers names -> SwissArmyTransformer names (diffusers' CogVideoX conversion, inverted).
SAT_BLOCK = {
    "norm1.norm": "transformer.layers.{i}.input_layernorm",
    "norm2.norm": "transformer.layers.{i}.post_attention_layernorm",
    "attn1.to_out.0": "transformer.layers.{i}.attention.dense",
    "ff.net.0.proj": "transformer.layers.{i}.mlp.dense_h_to_4h",
    "ff.net.2": "transformer.layers.{i}.mlp.dense_4h_to_h",
    "attn1.norm_q": "mixins.adaln_layer.query_layernorm_list.{i}",
    "attn1.norm_k": "mixins.adaln_layer.key_layernorm_list.{i}",
}
SAT_TOP = {
    "norm_final": "transformer.final_layernorm",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "patch_embed.proj": "mixins.patch_embed.proj",
    "patch_embed.text_proj": "mixins.patch_embed.text_proj",
    "norm_out.norm": "mixins.final_layer.norm_final",
    "proj_out": "mixins.final_layer.linear",
    "norm_out.linear": "mixins.final_layer.adaLN_modulation.1",
}


def tiny_tora(seed: int = 0, **backbone) -> CogVideoXTora:
    """A tiny Tora in the release's layout with trained-looking weights: fusers away from
    the identity, BatchNorm statistics away from their initial values."""
    torch.manual_seed(seed)
    model = CogVideoXBackbone(**(TINY | backbone))
    guidance = CogVideoXMotionGuidance(
        model.hidden_size,
        model.depth,
        16,
        model.patch_size,
        feature_channels=FEATURES,
        fuser_kwargs={"normalize_hidden": True},
    )
    tora = CogVideoXTora(model, guidance)
    with torch.no_grad():
        for name, tensor in tora.state_dict().items():
            if "running_var" in name:
                tensor.uniform_(0.5, 1.5)
            elif "running_mean" in name or "temporal" in name:
                tensor.normal_(0, 0.1)
    return tora.eval()


def release_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> ``ToraTransformer3DModel``'s keys."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key.removeprefix("backbone.")] = value
        elif key.startswith("motion_guidance.extractor."):
            out["traj_extractor." + key.removeprefix("motion_guidance.extractor.")] = value
        else:
            index, rest = key.removeprefix("motion_guidance.fusers.").split(".", 1)
            module, parameter = rest.rsplit(".", 1)
            out[f"fuser.{index}.{RELEASE_FUSER[module]}.{parameter}"] = value
    return out


def sat_names(release: dict[str, torch.Tensor], i2v: bool = False) -> dict[str, torch.Tensor]:
    """``ToraTransformer3DModel``'s keys -> the SAT ``module`` dict, with the buffers SAT keeps."""
    out: dict[str, torch.Tensor] = {}
    for key, value in release.items():
        block = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        name, parameter = key.rsplit(".", 1)
        if key.startswith("traj_extractor."):
            out[SAT + key] = value
        elif key.startswith("fuser."):
            out[SAT + "mixins.adaln_layer.fuser_list." + key.removeprefix("fuser.")] = value
        elif block and block[2] in SAT_BLOCK:
            out[SAT + SAT_BLOCK[block[2]].format(i=block[1]) + "." + block[3]] = value
        elif block and block[2] == "attn1.to_q":
            prefix = f"transformer_blocks.{block[1]}.attn1"
            qkv = [release[f"{prefix}.to_{p}.{block[3]}"] for p in "qkv"]
            sat_key = f"transformer.layers.{block[1]}.attention.query_key_value.{block[3]}"
            out[SAT + sat_key] = torch.cat(qkv)
        elif block and block[2] == "norm1.linear":
            # SAT: (shift, scale, gate) of attention, of the MLP, then of the text for both.
            first = value.chunk(6)
            second = release[f"transformer_blocks.{block[1]}.norm2.linear.{block[3]}"].chunk(6)
            chunks = first[:3] + second[:3] + first[3:] + second[3:]
            sat_key = f"mixins.adaln_layer.adaLN_modulations.{block[1]}.1.{block[3]}"
            out[SAT + sat_key] = torch.cat(chunks)
        elif block:
            continue  # to_k, to_v and norm2.linear went in with to_q / norm1.linear
        else:
            out[SAT + SAT_TOP[name] + "." + parameter] = value
    like = next(iter(release.values()))
    out[SAT + "mixins.pos_embed.freqs_sin"] = torch.randn(10, 64, device=like.device)
    out[SAT + "mixins.pos_embed.freqs_cos"] = torch.randn(10, 64, device=like.device)
    out[SAT + "transformer.position_embeddings.weight"] = torch.randn(64, 8, device=like.device)
    if i2v:
        out[SAT + "mixins.pos_embed.pos_embedding"] = torch.randn(1, 10, 8, device=like.device)
    return out


def save_shards(
    state: dict[str, torch.Tensor], folder: Path, config: dict, shards: int = 2
) -> None:
    """A diffusers ``save_pretrained`` folder: config.json, sharded safetensors + index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    weight_map = {}
    for index in range(shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[index::shards]}
        save_file(part, str(folder / name))
        weight_map |= dict.fromkeys(part, name)
    index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
    index_file.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def transformer_config(class_name: str) -> dict:
    return {"_class_name": class_name, "_diffusers_version": "0.32.0", **TINY}


def save_diffusers_layout(tora: CogVideoXTora, root: Path) -> Path:
    release = release_names(tora.state_dict())
    save_shards(release, root / "transformer", transformer_config("ToraTransformer3DModel"))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "ToraPipeline"}))
    return root


def save_sat_layout(tora: CogVideoXTora, folder: Path) -> Path:
    """As SAT's DeepSpeed save writes it: the model under ``module`` beside DeepSpeed's and
    SAT's client state (iteration, random states)."""
    folder.mkdir(parents=True)
    module = sat_names(release_names(tora.state_dict()))
    torch.save(
        {
            "module": module,
            "buffer_names": [k for k in module if "running" in k or "freqs" in k],
            "optimizer": None,
            "param_shapes": [OrderedDict((k, v.shape) for k, v in module.items())],
            "frozen_param_shapes": None,
            "shared_params": {},
            "frozen_param_fragments": None,
            "lr_scheduler": None,
            "data_sampler": None,
            "random_ltd": None,
            "sparse_tensor_module_names": set(),
            "skipped_steps": 0,
            "global_steps": 15000,
            "global_samples": 120000,
            "dp_world_size": 8,
            "mp_world_size": 1,
            "ds_config": {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
            "ds_version": "0.15.1",
            "iteration": 15000,
            "client_lr_scheduler": {"num_iters": 15000, "start_lr": 5e-5},
            "random_rng_state": random.getstate(),
            "np_rng_state": np.random.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.get_rng_state(),
        },
        folder / "mp_rank_00_model_states.pt",
    )
    return folder / "mp_rank_00_model_states.pt"


def save_split_layout(tora: CogVideoXTora, root: Path) -> tuple[Path, Path]:
    """``traj_extractor/traj_extractor.safetensors`` and ``fuser/fuser.safetensors`` (keys
    without prefix), and a CogVideoX transformer folder saved by diffusers itself."""
    release = release_names(tora.state_dict())
    for kind in ("traj_extractor", "fuser"):
        part = {
            k.removeprefix(kind + "."): v for k, v in release.items() if k.startswith(kind + ".")
        }
        (root / "tora" / kind).mkdir(parents=True)
        save_file(part, str(root / "tora" / kind / f"{kind}.safetensors"))
    base = CogVideoXTransformer3DModel(**TINY)
    base.load_state_dict({k: v for k, v in release.items() if not k.startswith(("traj", "fuser"))})
    base.save_pretrained(root / "CogVideoX-5b" / "transformer", max_shard_size="100KB")
    return root / "tora", root / "CogVideoX-5b"


def inputs(seed: int = 1, batch: int = 2, frames: int = 5):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, frames, 16, 8, 8, generator=generator)
    text = torch.randn(batch, 8, 32, generator=generator)
    flow = torch.randn(batch, frames, 16, 8, 8, generator=generator)
    return hidden, text, torch.tensor([999, 421][:batch]), flow


def official_prediction(tora: CogVideoXTora, flow: bool = True) -> torch.Tensor:
    hidden, text, timestep, video_flow = inputs()
    features = tora.motion_guidance.extract(rearrange(video_flow, "b f c h w -> b c f h w"))
    with torch.no_grad():
        return tora.run_transformer(hidden, text, timestep, features if flow else None)


@pytest.mark.parametrize("layout", ["diffusers", "sat", "split"])
def test_each_released_layout_loads_and_predicts_as_saved(tmp_path, layout):
    tora = tiny_tora()
    if layout == "diffusers":
        path, base = save_diffusers_layout(tora, tmp_path / "Tora_T2V_diffusers"), None
    elif layout == "sat":
        path, base = save_sat_layout(tora, tmp_path / "ckpts" / "tora" / "t2v"), None
    else:
        path, base = save_split_layout(tora, tmp_path)
    assert find_layout(path) == layout
    loaded = load_official_tora(path, transformer=base)
    expected = tora.state_dict()
    assert loaded.tora.state_dict().keys() == expected.keys()
    for key, value in loaded.tora.state_dict().items():
        assert torch.equal(value, expected[key]), key
    hidden, text, timestep, video_flow = inputs()
    with torch.no_grad():
        out = loaded(hidden, text, timestep, video_flow=video_flow).sample
        plain = loaded(hidden, text, timestep, return_dict=False)[0]
    assert out.shape == (2, 5, 16, 8, 8)
    assert torch.equal(out, official_prediction(tora))
    assert torch.equal(plain, official_prediction(tora, flow=False))
    assert (out - plain).abs().max() > 1e-3  # the trajectory changes the prediction


def test_sat_folder_and_file_and_i2v_position_embedding(tmp_path):
    tora = tiny_tora()
    file = save_sat_layout(tora, tmp_path / "t2v" / "1000")
    (tmp_path / "t2v" / "latest").write_text("1000")  # a SAT load folder
    assert find_layout(tmp_path / "t2v") == find_layout(file.parent) == find_layout(file) == "sat"
    assert load_official_tora(tmp_path / "t2v").tora.state_dict().keys() == tora.state_dict().keys()
    # I2V: the learned position embedding is stored, but the SAT code never adds it.
    i2v = tiny_tora(in_channels=32)
    module = sat_names(release_names(i2v.state_dict()), i2v=True)
    (tmp_path / "i2v").mkdir()
    torch.save({"module": module}, tmp_path / "i2v" / "mp_rank_00_model_states.pt")
    loaded = load_official_tora(tmp_path / "i2v")
    assert loaded.config.in_channels == 32
    assert not loaded.config.use_learned_positional_embeddings
    hidden, text, timestep, _ = inputs()
    image = torch.randn_like(hidden)
    with torch.no_grad():
        out = loaded(torch.cat([hidden, image], dim=2), text, timestep).sample
    assert out.shape == (2, 5, 16, 8, 8)


def test_no_trajectory_equals_diffusers_cogvideox(tmp_path):
    """The backbone of a loaded Tora is diffusers' model: without a trajectory the
    prediction equals CogVideoXTransformer3DModel loaded by diffusers' from_pretrained."""
    tora = tiny_tora()
    tora_folder, cogvideox = save_split_layout(tora, tmp_path)
    loaded = load_official_tora(tora_folder, transformer=cogvideox)
    reference = CogVideoXTransformer3DModel.from_pretrained(cogvideox / "transformer").eval()
    hidden, text, timestep, _ = inputs()
    rotary = loaded.tora.backbone.rotary_embeddings(5, 8, 8)
    with torch.no_grad():
        expected = reference(hidden, text, timestep, image_rotary_emb=rotary).sample
        ours = loaded(hidden, text, timestep, image_rotary_emb=rotary).sample
        ours_own_rope = loaded(hidden, text, timestep).sample
        convention = loaded.tora(
            rearrange(hidden, "b t c h w -> b c t h w"), timestep, text[:, None]
        )
    assert torch.equal(ours, expected)
    assert torch.equal(ours_own_rope, expected)
    assert torch.equal(rearrange(convention, "b c t h w -> b t c h w"), expected)


def test_fresh_fusers_are_the_identity():
    tora = tiny_tora()
    for fuser in tora.motion_guidance.fusers:
        torch.nn.init.zeros_(fuser.gamma.temporal.weight)
        torch.nn.init.zeros_(fuser.gamma.temporal.bias)
        torch.nn.init.zeros_(fuser.beta.temporal.weight)
        torch.nn.init.zeros_(fuser.beta.temporal.bias)
    assert torch.equal(official_prediction(tora), official_prediction(tora, flow=False))


def test_release_extractor_and_fuser_follow_the_release_equations():
    """TE: 2 x 2 patchify (c, p, q), conv_in, BN-ReLU-conv residual blocks; fuser: block i's
    norm1 video tokens h become h + GroupNorm32(h) * gamma + beta, gamma and beta a 3 x 3
    conv then a replicate-padded temporal conv."""
    tora = tiny_tora()
    guidance = tora.motion_guidance
    latents = torch.randn(1, 16, 3, 8, 8)
    x = rearrange(latents, "b c t (h p) (w q) -> (b t) (c p q) h w", p=2, q=2)
    x = guidance.extractor.conv_in(x)
    for block in guidance.extractor.body[:2]:
        h = F.conv2d(F.relu(block.bn1(x)), block.block1.weight, block.block1.bias, padding=1)
        x = x + F.conv2d(F.relu(block.bn2(h)), block.block2.weight, block.block2.bias, padding=1)
    with torch.no_grad():
        features = guidance.extract(latents)
        assert torch.allclose(features[0], rearrange(x, "t c h w -> 1 c t h w"), atol=1e-5)

        fuser = guidance.fusers[0]
        h = torch.randn(1, 3 * 4 * 4, 64)
        flow = rearrange(features[0], "1 c t h w -> t c h w")

        def modulation(spatial, temporal):
            y = rearrange(spatial(flow), "t c h w -> (h w) c t")
            y = F.conv1d(F.pad(y, (1, 1), mode="replicate"), temporal.weight, temporal.bias)
            return rearrange(y, "(h w) c t -> 1 (t h w) c", h=4)

        frames = rearrange(h, "1 (t s) c -> t c s", t=3)
        normed = rearrange(
            F.group_norm(frames, 32, fuser.norm.weight, fuser.norm.bias), "t c s -> 1 (t s) c"
        )
        gamma = modulation(fuser.gamma.spatial, fuser.gamma.temporal)
        beta = modulation(fuser.beta.spatial, fuser.beta.temporal)
        fused = guidance.fuse(0, h, features[0], 3, 4, 4)
    assert torch.allclose(fused, h + normed * gamma + beta, atol=1e-5)


def test_mismatched_weights_name_the_keys(tmp_path):
    tora = tiny_tora()
    release = release_names(tora.state_dict())
    release.pop("fuser.1.flow_beta_temporal.bias")
    release["fuser.1.extra.weight"] = torch.zeros(1)
    save_shards(release, tmp_path / "transformer", transformer_config("ToraTransformer3DModel"))
    with pytest.raises(WeightsMismatchError) as error:
        load_official_tora(tmp_path)
    message = str(error.value)
    assert "1 missing ['motion_guidance.fusers.1.beta.temporal.bias']" in message
    assert "1 unexpected ['motion_guidance.fusers.1.extra.weight']" in message
    with pytest.raises(ValueError, match="not released Tora weights"):
        load_official_tora(tmp_path / "transformer" / "config.json")


def test_5b_sizes_match_the_release():
    """CogVideoX-5B Tora on the meta device: diffusers' backbone 1024 keys / 5.57 B
    parameters, the release's extractor 1178 / 24.9 M and fusers 420 / 669 M; the SAT file
    2373 keys (2374 for I2V, whose backbone has 1025 keys)."""
    five_b = dict(
        num_attention_heads=48,
        attention_head_dim=64,
        num_layers=42,
        use_rotary_positional_embeddings=True,
    )
    with torch.device("meta"):
        backbone = CogVideoXBackbone(**five_b)
        guidance = CogVideoXMotionGuidance(
            backbone.hidden_size,
            backbone.depth,
            16,
            backbone.patch_size,
            fuser_kwargs={"normalize_hidden": True},
        )
        tora = CogVideoXTora(backbone, guidance)
        i2v = CogVideoXBackbone(**five_b, in_channels=32, use_learned_positional_embeddings=True)

    def parameters(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert (len(backbone.state_dict()), parameters(backbone)) == (1024, 5_570_283_072)
    assert (len(guidance.extractor.state_dict()), parameters(guidance.extractor)) == (
        1178,
        24_910_976,
    )
    assert (len(guidance.fusers.state_dict()), parameters(guidance.fusers)) == (420, 669_441_024)
    assert (len(tora.state_dict()), parameters(tora)) == (2622, 6_264_635_072)
    assert len(i2v.state_dict()) == 1025
    release = release_names(tora.state_dict())
    assert len(sat_names(release)) == 2373
    assert len(sat_names(release, i2v=True)) == 2374


def test_cogvideox_diffusion_targets_and_schedule():
    diffusion = CogVideoXDiffusion(snr_shift_scale=1.0)
    x0 = torch.randn(2, 16, 3, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.25, 0.999])
    seen = {}

    def model(x_t, t_in, **kwargs):
        seen["x_t"], seen["index"] = x_t, diffusion.model_timestep(t_in)
        return torch.zeros_like(x_t)

    loss = diffusion.training_losses(model, x0, {}, t=t, noise=noise)["loss"]
    alphas = diffusion.schedule.alphas_cumprod[[250, 999]].float().view(2, 1, 1, 1, 1)
    assert seen["index"].tolist() == [250, 999]
    assert alphas[1].item() == pytest.approx(0.0, abs=1e-6)  # zero terminal SNR
    assert torch.allclose(seen["x_t"], alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise, atol=1e-6)
    velocity = alphas.sqrt() * noise - (1 - alphas).sqrt() * x0
    assert torch.allclose(loss, velocity.pow(2).mean(dim=(1, 2, 3, 4)), atol=1e-5)
    times = diffusion.sampling_timesteps(x0.shape, 50)
    assert len(times) == 51 and times[0] == 0.999 and times[-1] == 0.0


def toy_components(sampler: str) -> ToraComponents:
    """Components around a toy linear 'model' for the pipeline's denoising loop."""

    class Toy(torch.nn.Module):
        backbone = torch.nn.Identity()
        motion_guidance = None

        def forward(self, x, timestep, y, mask=None, **extra):
            per_sample = y.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1, 1)
            return 0.3 * x + per_sample + 1e-3 * timestep.float().view(-1, 1, 1, 1, 1)

    return ToraComponents(
        model=Toy(),  # type: ignore[arg-type]
        vae=torch.nn.Identity(),  # type: ignore[arg-type]
        text_encoder=torch.nn.Identity(),  # type: ignore[arg-type]
        motion_encoder=None,
        flow=CogVideoXDiffusion(sampler=sampler),
        motion_rgb=None,
    )


@pytest.mark.parametrize(("sampler", "dynamic"), [("dpm", True), ("ddim", False)])
def test_pipeline_loop_equals_the_cogvideox_pipeline_loop(sampler, dynamic):
    """Our denoising loop with the CogVideoX diffusion equals diffusers' CogVideoXPipeline
    loop (scheduler.step, the DPM scheduler's previous x0, dynamic CFG) written out."""
    components = toy_components(sampler)
    pipeline = ToraPipeline(components)
    config = GenerationConfig(steps=5, cfg_scale=6.0, motion_in_guidance=False, dynamic_cfg=dynamic)
    noise = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    text, null = TextCondition(torch.ones(1, 1, 3, 2)), TextCondition(torch.zeros(1, 1, 3, 2))
    ours = pipeline.denoise(
        noise, text, null, Conditioning(), config, generator=torch.Generator().manual_seed(7)
    )

    scheduler_class = CogVideoXDPMScheduler if sampler == "dpm" else CogVideoXDDIMScheduler
    scheduler = scheduler_class(**components.flow.scheduler_config)
    scheduler.set_timesteps(5)
    generator = torch.Generator().manual_seed(7)
    latents, old_x0 = noise, None
    for i, t in enumerate(scheduler.timesteps):
        v_text = components.model(latents, t.view(1), text.y)
        v_null = components.model(latents, t.view(1), null.y)
        scale = 6.0
        if dynamic:
            scale = 1 + 6.0 * ((1 - math.cos(math.pi * ((5 - t.item()) / 5) ** 5.0)) / 2)
        v = v_null + scale * (v_text - v_null)
        if sampler == "dpm":
            back = scheduler.timesteps[i - 1] if i > 0 else None
            latents, old_x0 = scheduler.step(
                v, old_x0, t, back, latents, generator=generator, return_dict=False
            )
        else:
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
    assert torch.allclose(ours, latents, atol=1e-5), (ours - latents).abs().max()


def test_image_to_video_feeds_the_image_latents():
    """CogVideoX-I2V (32 input channels): ``image=`` becomes image latents at latent frame 0,
    zeros after, beside the noisy latents (diffusers' CogVideoXImageToVideoPipeline)."""
    from tora.inference import GenerationRequest
    from tora.models.cogvideox import build_cogvideox_vae
    from tora.models.text_encoders import CaptionEncoder

    vae = build_cogvideox_vae(
        block_out_channels=[16] * 4, layers_per_block=1, norm_num_groups=4, scaling_factor=0.7
    )
    components = ToraComponents(
        model=tiny_tora(in_channels=32),
        vae=vae.eval(),
        text_encoder=CaptionEncoder(max_length=8, output_dim=32),
        motion_encoder=None,
        flow=CogVideoXDiffusion(),
        motion_rgb=None,
    )
    pipeline = ToraPipeline(components)
    assert pipeline.takes_image_latents
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    seen: list[dict] = []
    components.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    request = GenerationRequest("a red circle", image=image)
    video = pipeline.generate([request], 9, 64, 64, GenerationConfig(steps=2), progress=False)
    assert video.shape == (1, 9, 64, 64, 3)
    image_latents = seen[0]["image_latents"]
    assert image_latents.shape == (2, 16, 3, 8, 8)  # doubled for CFG
    assert image_latents[:, :, 0].abs().sum() > 0 and not image_latents[:, :, 1:].any()
