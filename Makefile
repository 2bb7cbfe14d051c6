# Tora — every target sets up what it needs: `make train-stage1` and `make test`
# work on a fresh clone with nothing installed by hand.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# Variables a user sets, listed by `make help` from the `#:` lines:
#: WORLD=64|128  the tiny world's size; 128: own shards, checkpoints_128/, outputs/world_128/
#: ARGS="..."  extra Hydra overrides for the target's command, e.g. ARGS="trainer.max_steps=50"
#: EVAL_ARGS="..."  overrides for the evaluation ending each ablate-* sweep, e.g. "num_samples=16"
#: VAES="<a.ckpt> <b.ckpt>"  eval-vae: the video VAE checkpoints to compare (default: the chain's)
#: SRC=<folder>  prepare-data: the videos to prepare (searched recursively)
#: SHARDS=<folder>  prepare-data: where its shards go (default: data/prepared, from its config)
#: CKPT_IN=<path>  convert*: a DeepSpeed checkpoint directory or a .ckpt
#: CKPT_OUT=<file>  convert*: the .safetensors to write
#: OUTPUT_DIR=<folder>  sample, demo and eval write under it (default outputs, WORLD=128: outputs/world_128)
#: SIDE_BY_SIDE=1|0  train the base and the motion VAE at once, one thread each (default 1)
#: THREADS=<n>  torch threads of each training run (default: torch's own choice)

# WORLD=128: the tiny world at 128² with the 8x VAE (objects 4-6.5 latent pixels wide, as
# the 4x VAE gives at 64²; docs/findings.md), its own shards and checkpoints, and backbone
# patch 2 (the same 8 x 8 tokens per frame).
WORLD ?= 64
ifeq ($(WORLD),64)
DATA_DIR := data/synthetic
DATA_CONFIGS := configs/synthetic.yaml configs/world/default.yaml
CKPT_DIR := checkpoints
OUTPUT_DIR := outputs
WORLD_DATA :=
WORLD_VAE :=
WORLD_DIT :=
WORLD_EVAL :=
WORLD_SAMPLE :=
else ifeq ($(WORLD),128)
DATA_DIR := data/synthetic_128
DATA_CONFIGS := configs/synthetic.yaml configs/world/default.yaml configs/world/default_128.yaml
CKPT_DIR := checkpoints_128
OUTPUT_DIR := outputs/world_128
WORLD_DATA := world=default_128 out_dir=$(DATA_DIR)
WORLD_VAE := data=synthetic_128 paths.checkpoint_dir=$(CKPT_DIR) model/vae=tiny
WORLD_DIT := $(WORLD_VAE) 'model.backbone.patch_size=[1,2,2]'
# Errors reported in 64² pixels (comparable with WORLD=64); the LK window scaled with the frame.
WORLD_EVAL := $(WORLD_VAE) 'reference_size=[64,64]' lucas_kanade.window_size=41
WORLD_SAMPLE := 'resolution=[128,128]'
else
$(error WORLD=$(WORLD): 64 or 128 expected)
endif
DATA := $(DATA_DIR)/.complete
ARGS ?=
EVAL_ARGS ?=
SHARDS ?=

help: ## Show this help
	@echo "Targets:"
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'
	@echo "Variables (make <target> NAME=value):"
	@grep -hE '^#: ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = "  +"}; {sub(/^#: /, ""); printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements/constraints.txt
	test -d $(VENV) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $@

install: $(INSTALLED) ## Create .venv and install the package with pinned dependencies

$(DATA): $(DATA_CONFIGS) | $(INSTALLED)  # order-only: reinstalling does not regenerate data or retrain
	$(PY) -m tora.data.synthetic $(WORLD_DATA)
	touch $@

data: $(DATA) ## Write the synthetic WebDataset shards (train + val) under data/synthetic (WORLD=128: data/synthetic_128)

THREADS ?=
TRAIN := $(if $(THREADS),OMP_NUM_THREADS=$(THREADS) )$(PY) -m tora.train
# Runs sharing a terminal print plain progress lines, each opening with the run's name.
SHARED_TERMINAL ?=
LINES = $(if $(SHARED_TERMINAL),TORA_PROGRESS=lines TORA_PROGRESS_LABEL=$(basename $(notdir $@)) )

$(CKPT_DIR)/video_vae.ckpt: $(DATA)
	$(TRAIN) experiment=video_vae $(WORLD_VAE) $(ARGS)

$(CKPT_DIR)/base_t2v.ckpt: $(CKPT_DIR)/video_vae.ckpt
	$(LINES)$(TRAIN) experiment=base_t2v $(WORLD_DIT) $(ARGS)

$(CKPT_DIR)/motion_vae.ckpt: $(CKPT_DIR)/video_vae.ckpt
	$(LINES)$(TRAIN) experiment=motion_vae $(WORLD_VAE) $(ARGS)

# Stage 1's dense motion latents (model.latent_store), encoded once the motion VAE is
# done, on the core it leaves while the base still trains: stage 1 then encodes nothing.
MOTION_LATENTS := $(CKPT_DIR)/latents/stage1_motion.done
$(MOTION_LATENTS): $(CKPT_DIR)/motion_vae.ckpt
	$(LINES)$(TRAIN) experiment=stage1_flow 'encode_latents=[motion]' model.init_checkpoint=null \
		task_name=stage1_motion_latents $(WORLD_DIT) $(ARGS)
	mkdir -p $(@D) && touch $@

# The base model and the motion VAE each need only the video VAE, so they train at once,
# one thread each: on 2 cores a second process doubles the throughput where a second
# torch thread gives 1.2-1.4x for these small models (docs/results.md).
SIDE_BY_SIDE ?= 1
STAGE1_PREREQS := $(CKPT_DIR)/base_t2v.ckpt $(CKPT_DIR)/motion_vae.ckpt
stage1-prereqs: $(CKPT_DIR)/video_vae.ckpt
ifeq ($(SIDE_BY_SIDE),1)
	$(MAKE) --no-print-directory -j2 $(STAGE1_PREREQS) $(MOTION_LATENTS) THREADS=1 SHARED_TERMINAL=1
else
	$(MAKE) --no-print-directory $(STAGE1_PREREQS)
endif

train-video-vae: $(CKPT_DIR)/video_vae.ckpt ## Pretrain the video VAE (stand-in for OpenSora's VAE)
train-base: $(CKPT_DIR)/base_t2v.ckpt ## Pretrain the base text-to-video STDiT (stand-in for OpenSora)
train-motion-vae: $(CKPT_DIR)/motion_vae.ckpt ## Train the motion VAE on flow-RGB, initialised from the video VAE

train-stage1: stage1-prereqs ## Stage 1: train Tora's motion modules on dense optical flow
	$(TRAIN) experiment=stage1_flow $(WORLD_DIT) $(ARGS)

$(CKPT_DIR)/stage1_flow.ckpt:
	$(MAKE) train-stage1 WORLD=$(WORLD)

train-stage2: $(CKPT_DIR)/stage1_flow.ckpt ## Stage 2: continue on 1..N sparse trajectories
	$(TRAIN) experiment=stage2_traj $(WORLD_DIT) $(ARGS)

$(CKPT_DIR)/stage2_traj.ckpt:
	$(MAKE) train-stage2 WORLD=$(WORLD)

sample: $(CKPT_DIR)/stage2_traj.ckpt ## Generate from the stage-2 checkpoint with the example prompts and tracks (outputs/sample)
	$(PY) -m tora.sample ckpt=$(CKPT_DIR)/stage2_traj.ckpt prompts_file=examples/prompts.txt \
		'tracks=[examples/tracks/left_to_right.txt,examples/tracks/arc.txt]' out_dir=$(OUTPUT_DIR)/sample $(WORLD_SAMPLE) $(ARGS)

demo: $(CKPT_DIR)/stage2_traj.ckpt ## Serve the trajectory-drawing page for the stage-2 checkpoint on localhost (prints the address)
	$(PY) -m tora.demo ckpt=$(CKPT_DIR)/stage2_traj.ckpt out_dir=$(OUTPUT_DIR)/demo $(WORLD_SAMPLE) $(ARGS)

eval: $(CKPT_DIR)/stage2_traj.ckpt ## Evaluate the stage-2 checkpoint on held-out clips vs the no-control baseline (outputs/eval)
	$(PY) -m tora.evaluate ckpt=$(CKPT_DIR)/stage2_traj.ckpt out_dir=$(OUTPUT_DIR)/eval $(WORLD_EVAL) $(ARGS)

# A VAE training is a noisy draw (docs/findings.md): judge a VAE setting by several seeds,
# e.g. make eval-vae VAES="a/video_vae.ckpt b/video_vae.ckpt c/video_vae.ckpt".
VAES ?= $(CKPT_DIR)/video_vae.ckpt
COMMA := ,
EMPTY :=
SPACE := $(EMPTY) $(EMPTY)
eval-vae: $(VAES) ## Floors of video VAEs on the held-out clips: PSNR, object PSNR, TrajError; mean and spread (outputs/eval_vae)
	$(PY) -m tora.evaluate_vae 'vae_ckpts=[$(subst $(SPACE),$(COMMA),$(strip $(VAES)))]' \
		out_dir=$(OUTPUT_DIR)/eval_vae $(WORLD_EVAL) $(ARGS)

# Ablation sweeps (Hydra multirun): the runs of one sweep sit side by side under
# logs/ablate_<name>/multiruns/<time>/<n>/, each with its .hydra/overrides.yaml; the
# newest sweep folder is then evaluated and tabulated by tora.report.
# $(call ablate,<name>,<swept override>)
define ablate
$(TRAIN) -m experiment=ablation task_name=ablate_$(1) $(2) $(WORLD_DIT) $(ARGS)
$(PY) -m tora.report sweep_dir=$$(ls -td logs/ablate_$(1)/multiruns/*/ | head -1) $(WORLD_EVAL) $(EVAL_ARGS)
endef
ABLATION_PREREQS := stage1-prereqs
FUSERS := adaptive_norm,channel_concat,cross_attn
MOTION_ENCODERS := motion_vae,video_vae,avg_pool,frame_sampling
MOTION_SOURCES := dense,sparse,two_stage

ablate-fusion: $(ABLATION_PREREQS) ## Sweep the three fusers (adaptive norm, channel concat, cross-attention)
	$(call ablate,fusion,model/fuser=$(FUSERS))

ablate-compression: $(ABLATION_PREREQS) ## Sweep the four motion encoders (motion VAE, video VAE, avg pool, frame sampling)
	$(call ablate,compression,model/motion_encoder=$(MOTION_ENCODERS))

ablate-training: $(ABLATION_PREREQS) ## Sweep the training recipe (dense only, sparse only, two-stage)
	$(call ablate,training,model.motion_source.kind=$(MOTION_SOURCES))

# Checkpoint conversion: a DeepSpeed directory or .ckpt -> one .safetensors, and
# the small shareable file with only the Tora modules.
CONVERT_USAGE = usage: make $@ CKPT_IN=<DeepSpeed dir or .ckpt> CKPT_OUT=<file.safetensors>
convert: $(INSTALLED) ## Convert CKPT_IN (DeepSpeed dir or .ckpt) to CKPT_OUT (.safetensors)
	@test -n "$(CKPT_IN)" -a -n "$(CKPT_OUT)" || { echo "$(CONVERT_USAGE)"; exit 2; }
	$(PY) -m tora.convert_checkpoint $(CKPT_IN) $(CKPT_OUT)

convert-tora-modules: $(INSTALLED) ## Write only the Tora modules of CKPT_IN to CKPT_OUT (.safetensors)
	@test -n "$(CKPT_IN)" -a -n "$(CKPT_OUT)" || { echo "$(CONVERT_USAGE)"; exit 2; }
	$(PY) -m tora.convert_checkpoint $(CKPT_IN) $(CKPT_OUT) --tora-modules-only

bench: $(INSTALLED) ## Benchmark stage-1 training steps (writes bench/latest.json)
	$(PY) -m tora.bench $(ARGS)

# Your own videos -> training shards (tora.data.prepare), settings in
# configs/prepare_data.yaml via ARGS. Reruns skip the videos already done.
# Train on them with data=shards (docs/data.md).
prepare-data: $(INSTALLED) ## Prepare the videos under SRC as training shards in SHARDS
	@test -n "$(SRC)" || { echo "usage: make prepare-data SRC=<video folder> [SHARDS=<shard folder>] [ARGS=...]"; exit 2; }
	$(PY) -m tora.prepare_data src=$(SRC) $(if $(SHARDS),out=$(SHARDS)) $(ARGS)

tensorboard: $(INSTALLED) ## Serve TensorBoard over logs/
	$(VENV)/bin/tensorboard --logdir logs --bind_all

test: $(INSTALLED) ## Run the test suite (slow tests excluded)
	$(PY) -m pytest -m "not slow" -q

test-all: $(INSTALLED) ## Run every test, slow ones included
	$(PY) -m pytest -q

lint: $(INSTALLED) ## Lint with ruff and type-check src/tora with mypy
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

format: $(INSTALLED) ## Format with ruff
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

clean: ## Remove logs, checkpoints, data and caches (keeps .venv)
	rm -rf logs outputs checkpoints checkpoints_128 data .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install data stage1-prereqs train-video-vae train-base train-motion-vae train-stage1 train-stage2 \
	sample demo eval eval-vae ablate-fusion ablate-compression ablate-training convert convert-tora-modules bench \
	prepare-data tensorboard test test-all lint format clean
