"""The released Tora weights (alibaba/Tora) in each of their layouts, read into
:class:`CogVideoXTora` through the one checkpoint reader and strict loader.

Layouts (their key names are facts of the release and of diffusers' CogVideoX conversion
``scripts/convert_cogvideox_to_diffusers.py``):

- ``diffusers``: a ``Tora_T2V_diffusers`` download (or its ``transformer/`` folder):
  ``CogVideoXTransformer3DModel`` keys plus ``traj_extractor.*`` and ``fuser.N.*``;
- ``sat``: ``ckpts/tora/{t2v,i2v}/mp_rank_00_model_states.pt``, a dict whose ``module``
  holds SwissArmyTransformer names under ``model.diffusion_model.`` (fusers under
  ``mixins.adaln_layer.fuser_list.N``);
- ``split``: ``traj_extractor.safetensors`` and ``fuser.safetensors`` (keys without a
  prefix, optionally in ``traj_extractor/`` and ``fuser/`` sub-folders, ``_I2V`` names for
  the image-to-video pair) over a CogVideoX ``transformer/`` folder.

Our names: ``backbone.*`` (diffusers' own), ``motion_guidance.extractor.*`` and
``motion_guidance.fusers.N.{gamma,beta}.{spatial,temporal}.*`` / ``.norm.*`` (the release's
``flow_{gamma,beta}_{spatial,temporal}`` / ``flow_cond_norm``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tora.checkpoints import load_weights, load_weights_from, read_state_dict
from tora.models.cogvideox.backbone import CogVideoXBackbone
from tora.models.cogvideox.motion import CogVideoXMotionGuidance
from tora.models.cogvideox.tora import CogVideoXTora, ToraTransformer3D

BACKBONE = "backbone."
EXTRACTOR = "motion_guidance.extractor."
FUSERS = "motion_guidance.fusers."
RELEASE_FUSER_NAMES = {
    "flow_gamma_spatial": "gamma.spatial",
    "flow_gamma_temporal": "gamma.temporal",
    "flow_beta_spatial": "beta.spatial",
    "flow_beta_temporal": "beta.temporal",
    "flow_cond_norm": "norm",
}
SAT_FILE = "mp_rank_00_model_states.pt"
SAT_PREFIX = "model.diffusion_model."
# SwissArmyTransformer names -> diffusers names (diffusers' CogVideoX conversion).
SAT_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)\.(weight|bias)")
SAT_LAYER_NAMES = {
    "input_layernorm": "norm1.norm",
    "post_attention_layernorm": "norm2.norm",
    "attention.dense": "attn1.to_out.0",
    "mlp.dense_h_to_4h": "ff.net.0.proj",
    "mlp.dense_4h_to_h": "ff.net.2",
}
SAT_PER_LAYER = re.compile(
    r"mixins\.adaln_layer\.(adaLN_modulations|query_layernorm_list|key_layernorm_list|fuser_list)"
    r"\.(\d+)\.(.+)"
)
SAT_NAMES = {
    "transformer.final_layernorm": "norm_final",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "mixins.patch_embed.proj": "patch_embed.proj",
    "mixins.patch_embed.text_proj": "patch_embed.text_proj",
    "mixins.final_layer.norm_final": "norm_out.norm",
    "mixins.final_layer.linear": "proj_out",
    "mixins.final_layer.adaLN_modulation.1": "norm_out.linear",
}
# Buffers the SAT model stores and diffusers recomputes (RoPE tables, an unused position
# table), and the I2V learned position embedding, which the SAT code never adds.
SAT_DROPPED = (
    "mixins.pos_embed.freqs_sin",
    "mixins.pos_embed.freqs_cos",
    "transformer.position_embeddings.weight",
    "mixins.pos_embed.pos_embedding",
)
SPLIT_NAMES = {
    "traj_extractor": ("traj_extractor.safetensors", "traj_extractor_I2V.safetensors"),
    "fuser": ("fuser.safetensors", "fuser_I2V.safetensors"),
}


@dataclass
class OfficialWeights:
    """Released weights under :class:`CogVideoXTora`'s names, the backbone's
    ``CogVideoXTransformer3DModel`` arguments, and where they came from."""

    layout: str
    state_dict: dict[str, torch.Tensor]
    backbone_config: dict[str, Any]
    source: str


def fuser_key(index: str, rest: str) -> str:
    name, _, parameter = rest.partition(".")
    return f"{FUSERS}{index}.{RELEASE_FUSER_NAMES.get(name, name)}.{parameter}"


def from_release_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The diffusers-layout Tora transformer's keys -> ours."""
    out = {}
    for key, value in state.items():
        if key.startswith("traj_extractor."):
            out[EXTRACTOR + key.removeprefix("traj_extractor.")] = value
        elif key.startswith("fuser."):
            index, rest = key.removeprefix("fuser.").split(".", 1)
            out[fuser_key(index, rest)] = value
        else:
            out[BACKBONE + key] = value
    return out


def from_sat_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAT ``model.diffusion_model.*`` keys -> ours: qkv split into ``to_q/k/v``, the
    12-way adaLN modulation split into ``norm1`` / ``norm2`` (diffusers' conversion).
    Keys it does not know keep their name, so the strict loader lists them."""
    out = {}
    for full_key, value in state.items():
        key = full_key.removeprefix(SAT_PREFIX)
        layer = SAT_LAYER.fullmatch(key)
        per_layer = SAT_PER_LAYER.fullmatch(key)
        name, _, parameter = key.rpartition(".")
        if not full_key.startswith(SAT_PREFIX):
            out[full_key] = value
        elif key in SAT_DROPPED:
            continue
        elif key.startswith("traj_extractor."):
            out[EXTRACTOR + key.removeprefix("traj_extractor.")] = value
        elif layer and layer[2] == "attention.query_key_value":
            for projection, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{BACKBONE}transformer_blocks.{layer[1]}.attn1.{projection}.{layer[3]}"] = part
        elif layer and layer[2] in SAT_LAYER_NAMES:
            out[
                f"{BACKBONE}transformer_blocks.{layer[1]}.{SAT_LAYER_NAMES[layer[2]]}.{layer[3]}"
            ] = value
        elif per_layer and per_layer[1] == "adaLN_modulations":
            # SAT: shift, scale, gate of attention, of the MLP, then the same for the text.
            chunks = value.chunk(12, dim=0)
            block = f"{BACKBONE}transformer_blocks.{per_layer[2]}"
            weight_or_bias = per_layer[3].rpartition(".")[2]
            out[f"{block}.norm1.linear.{weight_or_bias}"] = torch.cat(chunks[0:3] + chunks[6:9])
            out[f"{block}.norm2.linear.{weight_or_bias}"] = torch.cat(chunks[3:6] + chunks[9:12])
        elif per_layer and per_layer[1] in ("query_layernorm_list", "key_layernorm_list"):
            norm = "norm_q" if per_layer[1] == "query_layernorm_list" else "norm_k"
            out[f"{BACKBONE}transformer_blocks.{per_layer[2]}.attn1.{norm}.{per_layer[3]}"] = value
        elif per_layer:
            out[fuser_key(per_layer[2], per_layer[3])] = value
        elif name in SAT_NAMES:
            out[f"{BACKBONE}{SAT_NAMES[name]}.{parameter}"] = value
        else:
            out[full_key] = value
    return out


def sat_backbone_config(state: dict[str, torch.Tensor], rotary: bool) -> dict[str, Any]:
    """The ``CogVideoXTransformer3DModel`` arguments read off converted SAT weights; the
    rest are CogVideoX 1.0's defaults (480 x 720, 49 frames)."""
    try:
        proj = state[f"{BACKBONE}patch_embed.proj.weight"]
        head_dim = state[f"{BACKBONE}transformer_blocks.0.attn1.norm_q.weight"].shape[0]
        text_dim = state[f"{BACKBONE}patch_embed.text_proj.weight"].shape[1]
        time_dim = state[f"{BACKBONE}time_embedding.linear_1.weight"].shape[0]
        out_dim = state[f"{BACKBONE}proj_out.weight"].shape[0]
    except KeyError as error:
        raise KeyError(
            f"SAT checkpoint: no {error} after conversion; not a CogVideoX model"
        ) from None
    layers = {
        key.split(".")[2] for key in state if key.startswith(f"{BACKBONE}transformer_blocks.")
    }
    inner, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    return dict(
        num_attention_heads=inner // head_dim,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=out_dim // patch**2,
        time_embed_dim=time_dim,
        text_embed_dim=text_dim,
        num_layers=len(layers),
        patch_size=patch,
        use_rotary_positional_embeddings=rotary,
    )


def read_json_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder}: no config.json (a diffusers transformer/ folder expected)"
        )
    return {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}


def transformer_folder(path: Path) -> Path:
    """A diffusers pipeline folder's ``transformer/``, or the folder itself."""
    return path / "transformer" if (path / "transformer" / "config.json").is_file() else path


def split_file(folder: Path, kind: str) -> Path | None:
    for name in SPLIT_NAMES[kind]:
        for candidate in (folder / name, folder / kind / name):
            if candidate.is_file():
                return candidate
    return None


def sat_file(path: Path) -> Path | None:
    """The SAT model file: ``path`` itself, in ``path``, or in the tag folder a SAT load
    folder's ``latest`` names (a DeepSpeed checkpoint of this project has optimizer
    shards beside it, a released SAT file none)."""
    if path.is_file() and path.name == SAT_FILE:
        return path
    if path.is_dir() and (path / SAT_FILE).is_file():
        return path / SAT_FILE
    if (path / "latest").is_file():
        tag = path / (path / "latest").read_text().strip()
        if (tag / SAT_FILE).is_file() and not any(tag.glob("*_optim_states.pt")):
            return tag / SAT_FILE
    return None


def find_layout(path: str | Path) -> str | None:
    """``diffusers``, ``sat`` or ``split`` when ``path`` looks like released Tora weights,
    else None (e.g. a checkpoint of this project). Reads no weights."""
    path = Path(path)
    if sat_file(path) is not None:
        return "sat"
    if not path.is_dir():
        return None
    if split_file(path, "traj_extractor") or split_file(path, "fuser"):
        return "split"
    config_file = transformer_folder(path) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("_class_name") == "ToraTransformer3DModel":
            return "diffusers"
    return None


def read_official_tora(path: str | Path, transformer: str | Path | None = None) -> OfficialWeights:
    """The released weights at ``path`` under our names. ``transformer``: the CogVideoX
    ``transformer/`` folder (or its pipeline folder) under a split layout; default
    ``path/transformer``."""
    path = Path(path)
    layout = find_layout(path)
    if layout == "sat":
        file = sat_file(path)
        assert file is not None
        raw = read_state_dict(file)
        state = from_sat_names(raw)
        rotary = f"{SAT_PREFIX}mixins.pos_embed.freqs_sin" in raw
        return OfficialWeights("sat", state, sat_backbone_config(state, rotary), str(file))
    if layout == "diffusers":
        folder = transformer_folder(path)
        state = from_release_names(read_state_dict(folder))
        return OfficialWeights("diffusers", state, read_json_config(folder), str(folder))
    if layout == "split":
        files = {kind: split_file(path, kind) for kind in SPLIT_NAMES}
        missing = [SPLIT_NAMES[kind][0] for kind, file in files.items() if file is None]
        if missing:
            raise FileNotFoundError(
                f"split Tora weights at {path}: {missing} not found (in the folder or its "
                "traj_extractor/ and fuser/ sub-folders)"
            )
        base = transformer_folder(Path(transformer) if transformer else path)
        if not (base / "config.json").is_file():
            raise FileNotFoundError(
                f"split Tora weights at {path}: no CogVideoX transformer folder at {base}; pass "
                "the CogVideoX download as transformer= (tora.sample: base_ckpt=)"
            )
        state = {BACKBONE + k: v for k, v in read_state_dict(base).items()}
        extractor, fusers = files["traj_extractor"], files["fuser"]
        assert extractor is not None and fusers is not None
        state |= {EXTRACTOR + k: v for k, v in read_state_dict(extractor).items()}
        for key, value in read_state_dict(fusers).items():
            index, rest = key.split(".", 1)
            state[fuser_key(index, rest)] = value
        return OfficialWeights("split", state, read_json_config(base), f"{path} over {base}")
    raise ValueError(
        f"{path}: not released Tora weights; expected a Tora_T2V_diffusers folder (transformer "
        f"config _class_name ToraTransformer3DModel), a SAT {SAT_FILE} (or its folder), or a "
        "folder with traj_extractor.safetensors and fuser.safetensors"
    )


def release_guidance_config(state: dict[str, torch.Tensor], depth: int) -> dict[str, Any]:
    """The release's extractor / fuser layout (``model/fuser=release``), sized from its weights."""
    conv_in = state[f"{EXTRACTOR}conv_in.weight"]
    blocks = {key.split(".")[3] for key in state if key.startswith(f"{EXTRACTOR}body.")}
    return dict(
        fuser="adaptive_norm",
        extractor="release",
        feature_channels=conv_in.shape[0],
        blocks_per_level=len(blocks) // depth,
        fuser_kwargs={"normalize_hidden": True},
    )


def build_release_tora(weights: OfficialWeights) -> CogVideoXTora:
    """A :class:`CogVideoXTora` shaped as the released weights (random weights)."""
    backbone = CogVideoXBackbone(**weights.backbone_config)
    guidance = CogVideoXMotionGuidance(
        hidden_size=backbone.hidden_size,
        depth=backbone.depth,
        latent_channels=backbone.latent_channels,
        patch_size=backbone.patch_size,
        **release_guidance_config(weights.state_dict, backbone.depth),
    )
    return CogVideoXTora(backbone, guidance)


def load_official_tora(
    path: str | Path, transformer: str | Path | None = None
) -> ToraTransformer3D:
    """Released Tora weights in any layout, loaded strictly; the result is a drop-in for
    the release's ``ToraTransformer3DModel`` (see :class:`ToraTransformer3D`)."""
    weights = read_official_tora(path, transformer)
    tora = build_release_tora(weights)
    load_weights(tora, weights.state_dict, weights.source)
    return ToraTransformer3D(tora.eval())


def load_pretrained(model: CogVideoXTora, path: str | Path) -> list[str]:
    """Initialise ``model`` from ``path``: released Tora weights (backbone, extractor and
    fusers; the model must have the release's layout) or a CogVideoX ``transformer/``
    folder (the backbone only)."""
    if find_layout(path) is not None:
        weights = read_official_tora(path)
        return load_weights(model, weights.state_dict, weights.source)
    return load_weights_from(model.backbone, transformer_folder(Path(path)))
