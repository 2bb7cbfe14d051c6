# Tora — every target sets up what it needs: `make train-stage1` and `make test`
# work on a fresh clone with nothing installed by hand.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# WORLD=128: the tiny world at 128² (the same scenes, objects 4-6.5 latent pixels wide
# instead of 2-3, so the 8x VAE keeps their shapes; README "Trajectory control") with
# its own shards and checkpoints and backbone patch 2 (the same 8 x 8 tokens per frame).
WORLD ?= 64
ifeq ($(WORLD),64)
DATA_DIR := data/synthetic
DATA_CONFIGS := configs/synthetic.yaml configs/world/default.yaml
CKPT := checkpoints
OUT := outputs
WORLD_DATA :=
WORLD_VAE :=
WORLD_DIT :=
WORLD_EVAL :=
WORLD_SAMPLE :=
else ifeq ($(WORLD),128)
DATA_DIR := data/synthetic_128
DATA_CONFIGS := configs/synthetic.yaml configs/world/default.yaml configs/world/default_128.yaml
CKPT := checkpoints_128
OUT := outputs/world_128
WORLD_DATA := world=default_128 out_dir=$(DATA_DIR)
WORLD_VAE := data=synthetic_128 paths.checkpoint_dir=$(CKPT)
WORLD_DIT := $(WORLD_VAE) 'model.backbone.patch_size=[1,2,2]'
# Errors reported in 64² pixels (comparable with WORLD=64); the LK window scaled with the frame.
WORLD_EVAL := $(WORLD_VAE) 'reference_size=[64,64]' lucas_kanade.window_size=41
WORLD_SAMPLE := 'resolution=[128,128]'
else
$(error WORLD=$(WORLD): 64 or 128 expected)
endif
DATA := $(DATA_DIR)/.complete
# Extra Hydra overrides for any training target, e.g. make train-stage1 ARGS="trainer.max_steps=50"
ARGS ?=
# Overrides for the evaluation that ends each ablation sweep, e.g. EVAL_ARGS="num_samples=32"
EVAL_ARGS ?=

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements/constraints.txt
	test -d $(VENV) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $@

install: $(INSTALLED) ## Create .venv and install the package with pinned dependencies

$(DATA): $(INSTALLED) $(DATA_CONFIGS)
	$(PY) -m tora.data.synthetic $(WORLD_DATA)
	touch $@

data: $(DATA) ## Write the synthetic WebDataset shards (train + val) under data/synthetic (WORLD=128: data/synthetic_128)

$(CKPT)/video_vae.ckpt: $(DATA)
	$(PY) -m tora.train experiment=video_vae export_checkpoint=$@ $(WORLD_VAE) $(ARGS)

$(CKPT)/base_t2v.ckpt: $(CKPT)/video_vae.ckpt
	$(PY) -m tora.train experiment=base_t2v export_checkpoint=$@ $(WORLD_DIT) $(ARGS)

$(CKPT)/motion_vae.ckpt: $(CKPT)/video_vae.ckpt
	$(PY) -m tora.train experiment=motion_vae export_checkpoint=$@ $(WORLD_VAE) $(ARGS)

train-video-vae: $(CKPT)/video_vae.ckpt ## Pretrain the video VAE (stand-in for OpenSora's VAE)
train-base: $(CKPT)/base_t2v.ckpt ## Pretrain the base text-to-video STDiT (stand-in for OpenSora)
train-motion-vae: $(CKPT)/motion_vae.ckpt ## Train the motion VAE on flow-RGB, initialised from the video VAE

train-stage1: $(CKPT)/base_t2v.ckpt ## Stage 1: train Tora's motion modules on dense optical flow
	$(PY) -m tora.train experiment=stage1_flow export_checkpoint=$(CKPT)/stage1.ckpt $(WORLD_DIT) $(ARGS)

$(CKPT)/stage1.ckpt:
	$(MAKE) train-stage1 WORLD=$(WORLD)

train-stage2: $(CKPT)/stage1.ckpt ## Stage 2: continue on 1..N sparse trajectories
	$(PY) -m tora.train experiment=stage2_traj export_checkpoint=$(CKPT)/stage2.ckpt $(WORLD_DIT) $(ARGS)

$(CKPT)/stage2.ckpt:
	$(MAKE) train-stage2 WORLD=$(WORLD)

sample: $(CKPT)/stage2.ckpt ## Generate from the stage-2 checkpoint with the example prompts and tracks (outputs/sample)
	$(PY) -m tora.sample ckpt=$(CKPT)/stage2.ckpt prompts_file=examples/prompts.txt \
		'tracks=[examples/tracks/left_to_right.txt,examples/tracks/arc.txt]' out_dir=$(OUT)/sample $(WORLD_SAMPLE) $(ARGS)

eval: $(CKPT)/stage2.ckpt ## Evaluate the stage-2 checkpoint on held-out clips vs the no-control baseline (outputs/eval)
	$(PY) -m tora.evaluate ckpt=$(CKPT)/stage2.ckpt out_dir=$(OUT)/eval $(WORLD_EVAL) $(ARGS)

# Ablation sweeps (Hydra multirun): the runs of one sweep sit side by side under
# logs/<task>/multiruns/<time>/<n>/, each with its .hydra/overrides.yaml.
ABLATION_PREREQS := $(CKPT)/base_t2v.ckpt $(CKPT)/motion_vae.ckpt

ablate-fusion: $(ABLATION_PREREQS) ## Sweep the three fusers (adaptive norm, channel concat, cross-attention)
	$(PY) -m tora.train -m experiment=ablation task_name=ablate_fusion \
		model/fuser=adaptive_norm,channel_concat,cross_attn $(WORLD_DIT) $(ARGS)
	$(PY) -m tora.report sweep_dir=$$(ls -td logs/ablate_fusion/multiruns/*/ | head -1) $(WORLD_EVAL) $(EVAL_ARGS)

ablate-compression: $(ABLATION_PREREQS) ## Sweep the four motion encoders (motion VAE, video VAE, avg pool, frame sampling)
	$(PY) -m tora.train -m experiment=ablation task_name=ablate_compression \
		model/motion_encoder=motion_vae,video_vae,avg_pool,frame_sampling $(WORLD_DIT) $(ARGS)
	$(PY) -m tora.report sweep_dir=$$(ls -td logs/ablate_compression/multiruns/*/ | head -1) $(WORLD_EVAL) $(EVAL_ARGS)

ablate-training: $(ABLATION_PREREQS) ## Sweep the training recipe (dense only, sparse only, two-stage)
	$(PY) -m tora.train -m experiment=ablation task_name=ablate_training \
		model.motion_source.kind=dense,sparse,two_stage $(WORLD_DIT) $(ARGS)
	$(PY) -m tora.report sweep_dir=$$(ls -td logs/ablate_training/multiruns/*/ | head -1) $(WORLD_EVAL) $(EVAL_ARGS)

# Checkpoint conversion: a DeepSpeed directory or .ckpt -> one .safetensors, and
# the small shareable file with only the Tora modules. CKPT_IN=<path> OUT=<file>
convert: $(INSTALLED) ## Convert CKPT_IN (DeepSpeed dir or .ckpt) to OUT (.safetensors)
	$(PY) -m tora.convert_checkpoint $(CKPT_IN) $(OUT)

convert-tora-modules: $(INSTALLED) ## Write only the Tora modules of CKPT_IN to OUT (.safetensors)
	$(PY) -m tora.convert_checkpoint $(CKPT_IN) $(OUT) --tora-modules-only

bench: $(INSTALLED) ## Benchmark stage-1 training steps (writes bench/latest.json)
	$(PY) -m tora.bench $(ARGS)

# Your own videos -> training shards (tora.data.prepare): SRC=<video folder>, OUT=<shard
# folder> (default data/prepared), settings in configs/prepare_data.yaml via ARGS.
# Reruns skip the videos already done. Train on them with data=shards (see README).
prepare-data: $(INSTALLED) ## Prepare the videos under SRC as training shards in OUT
	@test -n "$(SRC)" || { echo "usage: make prepare-data SRC=<video folder> [OUT=<shard folder>] [ARGS=...]"; exit 2; }
	$(PY) -m tora.prepare_data src=$(SRC) $(if $(OUT),out=$(OUT)) $(ARGS)

.PHONY: prepare-data

tensorboard: $(INSTALLED) ## Serve TensorBoard over logs/
	$(VENV)/bin/tensorboard --logdir logs --bind_all

test: $(INSTALLED) ## Run the test suite (slow tests excluded)
	$(PY) -m pytest -m "not slow" -q

test-all: $(INSTALLED) ## Run every test, slow ones included
	$(PY) -m pytest -q

lint: $(INSTALLED) ## Lint with ruff
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: $(INSTALLED) ## Format with ruff
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

clean: ## Remove logs, checkpoints, data and caches (keeps .venv)
	rm -rf logs outputs checkpoints data .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install data train-video-vae train-base train-motion-vae train-stage1 train-stage2 \
	sample eval ablate-fusion ablate-compression ablate-training convert convert-tora-modules bench \
	tensorboard test test-all lint format clean
