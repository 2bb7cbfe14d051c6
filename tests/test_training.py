"""Every training stage through the real configs: the stage chain, trainable
sets, identity at initialisation, sweeps, DDP on CPU, resume, DeepSpeed configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from conftest import PAPER_SET, SHORT, compose_train
from safetensors.torch import save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tora.checkpoints import read_state_dict
from tora.train import instantiate_module, train
from tora.training.latent_cache import LatentCache, encoder_fingerprint
from tora.training.motion_input import MotionSourceConfig
from tora.training.optim import WarmupCosine

FUSERS = ["adaptive_norm", "channel_concat", "cross_attn"]
NO_PREREQUISITES = [
    "model.vae_checkpoint=null",
    "model.init_checkpoint=null",
    "model.motion_encoder.checkpoint=null",
]


def build_module(overrides: list[str], tmp_path: Path):
    cfg = compose_train(overrides, tmp_path)
    return instantiate_module(cfg.model)


def test_chain_exports_every_stage(chain):
    for name in ["video_vae", "base_t2v", "motion_vae", "stage1_flow", "stage2_traj"]:
        assert (chain / f"{name}.ckpt").is_file(), name
    video_vae = read_state_dict(chain / "video_vae.ckpt")
    # The VAE stage fits the latent normalisation the diffusion stages see.
    assert not torch.equal(video_vae["vae.latent_scale"], torch.ones(4))
    stage1 = read_state_dict(chain / "stage1_flow.ckpt")
    base = read_state_dict(chain / "base_t2v.ckpt")
    # The tiny world's stage 1 trains everything: spatial blocks and caption encoder too
    # (the paper's frozen set is test_trainable_sets' temporal case).
    for key in (
        "model.backbone.spatial_blocks.0.attn.qkv.weight",
        "text_encoder.layers.layers.0.self_attn.in_proj_weight",
    ):
        assert not torch.equal(stage1[key], base[key]), key
    temporal = "model.backbone.temporal_blocks.0.mlp.fc1.weight"
    assert not torch.equal(stage1[temporal], base[temporal])
    assert any(k.startswith("model.motion_guidance.") for k in stage1)
    stage2 = read_state_dict(chain / "stage2_traj.ckpt")
    fuser_key = next(k for k in stage1 if k.startswith("model.motion_guidance.fusers."))
    assert not torch.equal(stage2[fuser_key], stage1[fuser_key])


def test_chain_logs_to_tensorboard(chain):
    event_files = list((chain.parent / "stage1_flow" / "logs").rglob("events.out.tfevents.*"))
    assert event_files
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "val/loss", "train/grad_norm"} <= scalars
    assert any(tag.startswith("params/") for tag in scalars)
    images = set(accumulator.Tags()["images"])
    assert {"val/samples", "train/motion_rgb"} <= images


@pytest.mark.parametrize(
    ("experiment", "overrides", "expected"),
    [
        (
            "base_t2v",
            [],
            {"model.backbone.spatial_blocks", "model.backbone.temporal_blocks", "text_encoder"},
        ),
        # The tiny world's stages train everything (its base is a short stand-in).
        (
            "stage1_flow",
            [],
            {
                "model.backbone.spatial_blocks",
                "model.backbone.temporal_blocks",
                "model.motion_guidance",
                "text_encoder",
            },
        ),
        # The paper's set, and the release's.
        (
            "stage1_flow",
            PAPER_SET,
            {"model.backbone.temporal_blocks", "model.motion_guidance"},
        ),
        (
            "stage1_flow",
            ["model.trainable=tora_modules", "model.train_text_encoder=false"],
            {"model.motion_guidance"},
        ),
    ],
)
def test_trainable_sets(tmp_path, experiment, overrides, expected):
    module = build_module([f"experiment={experiment}", *overrides, *NO_PREREQUISITES], tmp_path)
    trainable_names = {n for n, p in module.named_parameters() if p.requires_grad}
    for prefix in expected:
        assert any(n.startswith(prefix) for n in trainable_names), prefix
    full = module.hparams["trainable"] == "full"
    allowed = tuple(expected) + ("model.backbone.",) * full
    assert all(n.startswith(allowed) for n in trainable_names)
    assert not any(n.startswith(("vae.", "motion_encoder.")) for n in trainable_names)
    assert not any(n.endswith("rope.freqs") for n in trainable_names)


def test_warmup_cosine_schedule(tmp_path):
    """model/scheduler=warmup_cosine: linear warm-up, then a half cosine to min_ratio
    x lr at trainer.max_steps, read from the composed config."""
    module = build_module(
        ["experiment=stage1_flow", "model/scheduler=warmup_cosine", "trainer.max_steps=250"]
        + NO_PREREQUISITES,
        tmp_path,
    )
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lr = module.hparams.optimizer["lr"]
    rates = []
    for _ in range(260):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(lr / 50) and rates[49] == pytest.approx(lr)
    assert rates[150] == pytest.approx(lr * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert rates[250] == pytest.approx(lr * 0.1) and rates[259] == pytest.approx(lr * 0.1)
    assert all(a >= b for a, b in zip(rates[49:], rates[50:], strict=False))
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        WarmupCosine(warmup_steps=50, total_steps=50)


def test_latent_cache_returns_what_the_vae_encodes(tmp_path):
    """model.latent_cache: a cached clip's latents equal a fresh encode; clips are told
    apart by content (never by name); nothing is stored beyond max_clips."""
    module = build_module(
        ["experiment=base_t2v", "model.latent_cache=3", *NO_PREREQUISITES], tmp_path
    ).eval()
    video = torch.rand(4, 3, 5, 16, 16) * 2 - 1
    calls = []

    def encode(clips):
        calls.append(len(clips))
        return module.vae.encode_latents(clips)

    cache = module.latent_cache
    first = cache.encode(video, encode)
    torch.testing.assert_close(first, module.vae.encode_latents(video))
    assert calls == [4] and len(cache.latents) == 3 and cache.hits == 0  # the 4th did not fit
    # Same clips in another order: three hits, the fourth encoded again.
    order = [3, 2, 1, 0]
    again = cache.encode(video[order], encode)
    torch.testing.assert_close(again, first[order])
    assert calls == [4, 1] and cache.hits == 3 and cache.hit_rate == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="one latent per clip expected, got 4 for 2"):
        cache.store(video[:2], first)
    # One changed pixel, or another length, is another clip (never a stale latent).
    changed = video.clone()
    changed[0, 0, 0, 0, 0] += 0.5
    assert len(set(cache.keys(changed)) & set(cache.keys(video))) == 3
    longer = torch.rand(4, 3, 9, 16, 16) * 2 - 1
    assert cache.encode(longer, encode).shape[2] == 3 and calls[-1] == 4

    # Through the module, in training and validation steps alike (a validation clip
    # named like a training clip is another clip: its content differs).
    batch = {"video": video, "caption": ["x"] * 4, "key": ["a", "b", "a", "c"]}
    torch.testing.assert_close(module.step_inputs(batch).x0, first)
    assert cache.hits == 6
    other = dict(batch, video=torch.rand(4, 3, 5, 16, 16) * 2 - 1)
    torch.testing.assert_close(
        module.step_inputs(other).x0, module.vae.encode_latents(other["video"])
    )
    assert cache.hits == 6


def test_latent_store_keeps_latents_for_the_next_run(tmp_path):
    """model.latent_store: the latents written by one run are read by the next run whose
    encoder has the same fingerprint, up to max_clips; another encoder reads none; a file
    that is not a latent store is refused with its name."""
    module = build_module(["experiment=base_t2v", *NO_PREREQUISITES], tmp_path).eval()
    video = torch.rand(3, 3, 5, 16, 16) * 2 - 1
    cache = LatentCache(8)
    latents = cache.encode(video, module.vae.encode_latents)
    fingerprint = encoder_fingerprint(module.vae, {"arch": "tiny"}, "32-true")
    path = cache.save(tmp_path / "store", "video", fingerprint, rank=1)
    assert path.name == f"video-{fingerprint}-rank1.safetensors"

    later = LatentCache(8)
    assert later.load(tmp_path / "store", "video", fingerprint) == 3
    torch.testing.assert_close(later.encode(video, lambda _: pytest.fail("encoded")), latents)
    assert later.hits == 3 and later.misses == 0
    assert later.unsaved == 0 and cache.unsaved == 0  # nothing new to write back
    assert LatentCache(2).load(tmp_path / "store", "video", fingerprint) == 2
    # The fingerprint follows the weights, the config and the precision.
    assert encoder_fingerprint(module.vae, {"arch": "tiny"}, "bf16-mixed") != fingerprint
    assert encoder_fingerprint(module.vae, {"arch": "other"}, "32-true") != fingerprint
    with torch.no_grad():
        next(module.vae.parameters()).add_(1e-3)
    changed = encoder_fingerprint(module.vae, {"arch": "tiny"}, "32-true")
    assert changed != fingerprint
    assert LatentCache(8).load(tmp_path / "store", "video", changed) == 0
    # A file under a store's name without the store's metadata is refused.
    bad = tmp_path / "store" / f"video-{changed}-rank0.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match=f"latent store {bad}: format"):
        LatentCache(8).load(tmp_path / "store", "video", changed)


def test_chain_passes_latents_between_stages(chain):
    """The base leaves its video latents to stage 1 (same VAE: same fingerprint), so
    stage 1's first step finds its clips cached; stage 1 leaves its dense motion latents."""
    files = sorted(path.name for path in (chain / "latents").iterdir())
    video_files = [name for name in files if name.startswith("video-")]
    motion_files = [name for name in files if name.startswith("motion-")]
    assert len(video_files) == 1 and len(motion_files) == 1, files
    events = list((chain.parent / "stage1_flow" / "logs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    hit_rates = accumulator.Scalars("train/latent_cache_hit_rate")
    assert hit_rates[0].step == 0 and hit_rates[0].value == 1.0


def test_encode_latents_fills_the_store_stage_1_reads(tmp_path, chain, synthetic_shards):
    """encode_latents=[motion]: one pass over the training clips with the motion VAE,
    before the base exists, writes the file stage 1 reads (same fingerprint, same
    latents) and trains nothing."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ["video_vae.ckpt", "motion_vae.ckpt"]:
        (checkpoints / name).symlink_to(chain / name)
    overrides = [
        "experiment=stage1_flow",
        "encode_latents=[motion]",
        "model.init_checkpoint=null",
        *SHORT,
    ]
    train(compose_train(overrides, tmp_path / "run", synthetic_shards, checkpoints))
    written = sorted((checkpoints / "latents").iterdir())
    assert [path.name for path in written] == [
        path.name for path in sorted((chain / "latents").glob("motion-*"))
    ]
    assert not (checkpoints / "stage1_flow.ckpt").exists()
    encoded, trained = LatentCache(64), LatentCache(64)
    fingerprint = written[0].name.split("-")[1]
    assert encoded.load(checkpoints / "latents", "motion", fingerprint) == 8  # every clip
    trained.load(chain / "latents", "motion", fingerprint)
    shared = set(encoded.latents) & set(trained.latents)
    assert shared
    for key in shared:
        torch.testing.assert_close(encoded.latents[key], trained.latents[key])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=stage1_flow", "encode_latents=[flow]"], r"parts among \['video', 'motion'\]"),
        (["experiment=base_t2v", "encode_latents=[motion]"], "'motion' needs an experiment with"),
        (
            ["experiment=stage1_flow", "encode_latents=[video]", "model.latent_store=null"],
            "model.latent_store set",
        ),
    ],
)
def test_encode_latents_refuses_what_it_cannot_store(tmp_path, overrides, message):
    cfg = compose_train([*overrides, *NO_PREREQUISITES], tmp_path)
    with pytest.raises(ValueError, match=message):
        train(cfg)


def test_motion_latent_cache_keeps_dense_conditions_only(tmp_path):
    """Dense flow conditions are a function of the clip: their motion latents are cached
    and equal a fresh encode; sparse ones (drawn anew each step) are always encoded."""
    module = build_module(
        ["experiment=stage2_traj", "model.latent_cache=8", *NO_PREREQUISITES], tmp_path
    ).eval()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "video": torch.rand(4, 3, 5, 16, 16, generator=generator) * 2 - 1,
        "flow": torch.randn(4, 4, 16, 16, 2, generator=generator) * 2,
        "caption": ["a red circle moves right"] * 4,
    }
    encoded = []
    real_encode = module.motion_encoder.encode
    module.motion_encoder.encode = lambda rgb: encoded.append(len(rgb)) or real_encode(rgb)
    rgb = torch.rand(4, 3, 5, 16, 16, generator=generator) * 2 - 1
    dense = torch.tensor([True, False, True, False])
    mixed = module.encode_motion(rgb, dense)
    torch.testing.assert_close(mixed, real_encode(rgb))
    # A mixed batch is encoded whole; its dense clips' latents are kept.
    keys = LatentCache.keys(rgb)
    assert encoded == [4] and sorted(module.motion_latent_cache.latents) == sorted(
        [keys[0], keys[2]]
    )
    # An all-dense batch reads them and encodes only the rest.
    encoded.clear()
    again = module.encode_motion(rgb, torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(again, mixed)
    assert encoded == [2] and module.motion_latent_cache.hits == 2
    # No dense clip: the encoder only, nothing looked up.
    encoded.clear()
    module.encode_motion(rgb, torch.zeros(4, dtype=torch.bool))
    assert encoded == [4] and module.motion_latent_cache.hits == 2
    assert module.motion_latent_cache.misses == 2
    # Through a training step's inputs: stage 1's dense source fills it from the flow.
    module.motion_source = MotionSourceConfig(kind="dense")
    module.motion_latent_cache = LatentCache(8)
    first = module.step_inputs(batch).motion
    second = module.step_inputs(batch).motion
    assert module.motion_latent_cache.hits == 4 and module.motion_latent_cache.misses == 4
    torch.testing.assert_close(second["motion_latents"], real_encode(first["motion_rgb"]))


def test_sparse_clips_without_tracks_are_counted(tmp_path, caplog):
    """Stage 2 draws its sparse tracks from the clips' stored ones: a clip that stores
    none trains on an empty map, which is counted and named, never silent."""
    module = build_module(["experiment=stage2_traj", *NO_PREREQUISITES], tmp_path).eval()
    assert module.motion_source.sparse_from == "tracks"
    module.motion_source = MotionSourceConfig(kind="sparse", sparse_from="tracks")
    tracks = torch.zeros(2, 8, 5, 2)
    tracks[0, 0] = torch.linspace(2, 12, 5)[:, None]
    batch = {
        "flow": torch.randn(2, 4, 16, 16, 2),
        "tracks": tracks,
        "track_mask": torch.tensor([[True] + [False] * 7, [False] * 8]),
        "key": ["clip-a", "clip-b"],
    }
    with caplog.at_level("WARNING"):
        condition = module.motion_inputs(batch)
        module.motion_inputs(batch)
    assert condition["track_mask"].any(dim=1).tolist() == [True, False]
    assert module.sparse_clips_without_tracks == 2
    warnings = [r.getMessage() for r in caplog.records if "has no track" in r.getMessage()]
    assert len(warnings) == 1 and "clip clip-b" in warnings[0]


@pytest.mark.parametrize("fuser", FUSERS)
@pytest.mark.parametrize("placement", ["temporal", "both"])
def test_tora_equals_base_at_initialisation(tmp_path, fuser, placement):
    module = build_module(
        [
            "experiment=stage1_flow",
            f"model/fuser={fuser}",
            f"model.fuser.placement={placement}",
            *NO_PREREQUISITES,
        ],
        tmp_path,
    )
    torch.manual_seed(0)
    with torch.no_grad():  # a "trained" base: temporal blocks no longer zero
        for param in module.model.backbone.parameters():
            param.add_(0.02 * torch.randn_like(param))
    latents = (2, module.vae.latent_channels, 5, 8, 8)
    x, motion = torch.randn(latents), torch.randn(latents)
    text = module.encode_text(["a red circle moves right", "a blue square"])
    y, mask = text.y, text.mask
    t = torch.tensor([300.0, 700.0])
    module.eval()
    with torch.no_grad():
        base = module.model(x, t, y, mask=mask)
        tora = module.model(x, t, y, mask=mask, motion_latents=motion)
    assert torch.equal(base, tora)
    with torch.no_grad():  # and the motion path is live once the fusers move
        for param in module.model.motion_guidance.parameters():
            param.add_(0.05 * torch.randn_like(param))
        moved = module.model(x, t, y, mask=mask, motion_latents=motion)
        features = module.model.motion_guidance.extract(motion)
        from_features = module.model(x, t, y, mask=mask, motion_features=features)
    assert not torch.allclose(base, moved)
    assert torch.equal(moved, from_features)  # samplers extract the features once


def test_deepspeed_configs_instantiate_their_strategy(tmp_path):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    expected = {
        "deepspeed_zero1": (1, False, False),
        "deepspeed_zero2": (2, False, False),
        "deepspeed_zero3": (3, False, False),
        "deepspeed_zero2_offload": (2, True, False),
        "deepspeed_zero3_offload": (3, True, True),
    }
    for name, (stage, offload_optimizer, offload_parameters) in expected.items():
        cfg = compose_train([f"trainer={name}"], tmp_path)
        strategy = hydra.utils.instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, DeepSpeedStrategy)
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_optimizer" in zero) == offload_optimizer, name
        assert ("offload_param" in zero) == offload_parameters, name


def test_resume_continues_step_count_and_optimizer_state(tmp_path, chain, synthetic_shards):
    common = [
        "experiment=stage1_flow",
        "export_checkpoint=null",  # would overwrite the chain's stage1_flow.ckpt
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
    ]
    first = compose_train([*common, "trainer.max_steps=2"], tmp_path / "a", synthetic_shards, chain)
    train(first)
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    second = compose_train(
        [*common, "trainer.max_steps=4", f"ckpt_path={last}"],
        tmp_path / "b",
        synthetic_shards,
        chain,
    )
    train(second)
    resumed = torch.load(
        tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert resumed["global_step"] == 4
    steps = [s["step"] for s in resumed["optimizer_states"][0]["state"].values()]
    assert all(float(step) == 4 for step in steps)


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "tora.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def cli_overrides(tmp_path: Path, shards: Path, checkpoints: Path) -> list[str]:
    return [
        f"paths.log_dir={tmp_path}/logs",
        f"paths.checkpoint_dir={checkpoints}",
        f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar",
        "data.num_workers=0",
        "extras.print_config=false",
        "callbacks.progress_bar=null",
    ]


def test_fuser_sweep_multirun(tmp_path, chain, synthetic_shards):
    """As `make ablate-fusion` runs it: the sweep folder comes from the default paths."""
    default_log_dir = [
        o
        for o in cli_overrides(tmp_path, synthetic_shards, chain)
        if not o.startswith("paths.log_dir=")
    ]
    run_cli(
        [
            "-m",
            "experiment=stage1_flow",
            "export_checkpoint=null",  # would overwrite the chain's stage1_flow.ckpt
            f"model/fuser={','.join(FUSERS)}",
            *SHORT,
            *default_log_dir,
        ],
        cwd=tmp_path,
    )
    (sweep_dir,) = (tmp_path / "logs" / "stage1_flow" / "multiruns").iterdir()
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "checkpoints" / "last.ckpt").exists())
    assert len(runs) == 3, runs
    swept = {
        line.split("=")[1].strip()
        for run in runs
        for line in (run / ".hydra" / "overrides.yaml").read_text().splitlines()
        if "model/fuser=" in line
    }
    assert swept == set(FUSERS)


def test_stage1_ddp_on_two_cpu_processes(tmp_path, chain, synthetic_shards):
    result = run_cli(
        [
            "experiment=stage1_flow",
            "trainer=ddp_sim",
            *SHORT,
            f"hydra.run.dir={tmp_path}/run",
            f"export_checkpoint={tmp_path}/ddp.ckpt",
            *cli_overrides(tmp_path, synthetic_shards, chain),
        ],
        cwd=tmp_path,
    )
    exported = torch.load(tmp_path / "ddp.ckpt", map_location="cpu", weights_only=False)
    assert exported["global_step"] == 2, result.stdout[-2000:]


def test_stage1_refuses_a_motion_vae_with_another_flow_rgb_scale(tmp_path, chain):
    # The chain's motion VAE was trained with the tiny-world normalisation ...
    motion_vae = torch.load(chain / "motion_vae.ckpt", map_location="cpu", weights_only=False)
    assert motion_vae["hyper_parameters"]["motion_rgb"]["max_displacement_ref"] == 3.0
    overrides = [
        "experiment=stage1_flow",
        "model/motion_encoder=motion_vae",
        "model.vae_checkpoint=null",
        "model.init_checkpoint=null",
        f"model.motion_encoder.checkpoint={chain}/motion_vae.ckpt",
    ]
    assert build_module(overrides, tmp_path).components.motion_rgb.max_displacement_ref == 3.0
    # ... so a stage on the paper's normalisation must not silently encode with it.
    with pytest.raises(ValueError, match=r"motion_vae.ckpt was trained with .*=3\.0.*=40\.0"):
        build_module([*overrides, "model/motion_rgb=default"], tmp_path)


def test_base_refuses_a_video_vae_with_another_architecture(tmp_path, chain):
    """norm and shortcut change what the VAE computes but not one state-dict key:
    loading weights trained with another setting must fail loudly, naming it."""
    overrides = [
        "experiment=base_t2v",
        f"model.vae_checkpoint={chain}/video_vae.ckpt",
        "model.init_checkpoint=null",
    ]
    assert build_module(overrides, tmp_path).vae.shortcut == "per_frame"
    with pytest.raises(
        ValueError,
        match=r"video_vae.ckpt was trained with another architecture "
        r"\(norm: checkpoint 'channel' vs config 'group', shortcut: checkpoint 'per_frame' vs config 'none'\)",
    ):
        build_module([*overrides, "model.vae.norm=group", "model.vae.shortcut=false"], tmp_path)
    with pytest.raises(
        ValueError,
        match="backbone.in_channels=4 but the VAE has latent_channels=16",
    ):
        build_module([*overrides, "model.backbone.in_channels=4"], tmp_path)


def test_the_4x_vae_with_4_channels_gives_the_8x_token_grid_at_patch_2(tmp_path):
    """model/vae=tiny_f4c4 at patch 2: 16 x 16 x 4 latents per frame, tokenised to the
    same 8 x 8 tokens of 16 values that the 8x VAE gives at patch 1."""
    module = build_module(
        [
            "experiment=stage1_flow",
            *NO_PREREQUISITES,
            "model/vae=tiny_f4c4",
            "model.backbone.patch_size=[1,2,2]",
        ],
        tmp_path,
    )
    vae, backbone = module.components.vae, module.components.model.backbone
    assert (vae.latent_channels, vae.spatial_factor, vae.shortcut) == (4, 4, "pooled")
    video = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = vae.encode_latents(video)
        tokens = backbone.x_embedder(latents)
    assert latents.shape == (1, 4, 5, 16, 16)
    assert tokens.shape == (1, 5 * 8 * 8, backbone.hidden_size)
    assert backbone.x_embedder.proj.weight[0].numel() == 16  # values per token


def test_vae_architecture_reads_the_older_boolean_shortcut():
    """Checkpoints written before the per-frame shortcut stored shortcut: true/false."""
    from tora.models.build import vae_architecture

    assert vae_architecture({"shortcut": True}) == vae_architecture({"shortcut": "pooled"})
    assert vae_architecture({"shortcut": False})["shortcut"] == "none"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.resolution=[62,64]"], r"data.resolution=\[62, 64\] do not fit the VAE: .*H=62"),
        (["data.num_frames=16"], r"data\.num_frames.*16"),
        (
            # the 4x VAE at patch 2
            ["model/vae=tiny_f4", "model.backbone.patch_size=[1,2,2]", "data.resolution=[68,68]"],
            r"17 x 17 latents, not divisible by model.backbone.patch_size=\[1, 2, 2\]: "
            r"use a multiple of 8 x 8 pixels",
        ),
    ],
)
def test_clip_sizes_the_model_cannot_take_fail_before_training(tmp_path, overrides, message):
    cfg = compose_train(["experiment=stage1_flow", *NO_PREREQUISITES, *overrides], tmp_path)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_runs_without_a_logger(tmp_path, synthetic_shards):
    """``logger=none`` (quick runs): the learning-rate monitor, which needs a logger to
    write to, is dropped instead of stopping the run."""
    cfg = compose_train(["experiment=video_vae", "logger=none", *SHORT], tmp_path, synthetic_shards)
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/psnr" in metrics
    assert (tmp_path / "checkpoints" / "video_vae.ckpt").is_file()
    assert not (tmp_path / "logs" / "tensorboard").exists()


def test_bf16_mixed_precision_trains_with_the_fused_optimizer_config(tmp_path, synthetic_shards):
    """``trainer.precision=bf16-mixed`` (every GPU trainer config) with gradient clipping
    and ``fused: true``: Lightning refuses to clip for a fused optimizer, so the fused
    kernel is switched off there instead of stopping the run at its first step."""
    cfg = compose_train(
        ["experiment=video_vae", "logger=none", "trainer.precision=bf16-mixed", *SHORT],
        tmp_path,
        synthetic_shards,
    )
    assert cfg.model.optimizer.fused and cfg.trainer.gradient_clip_val > 0
    metrics = train(cfg)
    assert metrics["train/loss"] == pytest.approx(metrics["train/loss"])  # finite, not NaN
    exported = torch.load(tmp_path / "checkpoints" / "video_vae.ckpt", weights_only=False)
    assert exported["global_step"] == 2
