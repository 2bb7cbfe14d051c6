"""Text encoders: captions -> token embeddings ``y [B, 1, L, C]`` and a mask ``[B, L]``.

The layout follows OpenSora v1.2, whose STDiT3 takes ``y [B, 1, L, C]`` and a
``mask [B, L]`` (long, 1 = real token). Three sources:

- ``T5TextEncoder``: a frozen T5 encoder (T5-XXL, 300 tokens, C = 4096 for
  OpenSora v1.2) loaded from a local directory via ``transformers``;
- ``CaptionEncoder``: a tiny trainable encoder for the synthetic world;
- ``stack_text_embeddings``: embeddings precomputed offline (e.g. a shard's
  ``t5.npy``), padded and stacked into the same layout.
"""

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange, repeat
from torch import nn


class TextEncoder(nn.Module):
    """Interface: ``encode(captions) -> (y [B, 1, L, C], mask [B, L] long)``.

    Attributes:
        output_dim: C.
        max_length: L (captions are padded or truncated to it).
    """

    output_dim: int
    max_length: int

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def null(
        self, batch_size: int, null_embedding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unconditional caption for classifier-free guidance.

        Without ``null_embedding``, the encoding of the empty caption. With
        one (``[L, C]``; OpenSora: the DiT's learned ``y_embedder.y_embedding``)
        it is repeated over the batch and the mask is ``None``: OpenSora pairs
        its null tokens with the conditional caption's mask, which is what
        ``RectifiedFlow.sample`` does with a ``None`` null mask.
        """
        if null_embedding is None:
            return self.encode([""] * batch_size)
        return repeat(null_embedding, "l c -> b 1 l c", b=batch_size), None


class FrozenEncoderMixin(nn.Module):
    """Keeps ``self.model`` in eval mode whatever the parent module does."""

    model: nn.Module

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self


class T5TextEncoder(FrozenEncoderMixin, TextEncoder):
    """A frozen T5 encoder and its tokenizer, loaded from a local directory.

    Args:
        path: directory holding ``config.json``, the weights and the tokenizer
            files (e.g. a download of ``DeepFloyd/t5-v1_1-xxl``).
        max_length: tokens per caption (300 for OpenSora v1.2, 226 for CogVideoX).
        dtype: dtype of the T5 weights and outputs (a ``torch.dtype`` or its name, e.g.
            ``bfloat16`` in a config).
        tokenizer_path: the tokenizer's directory when it is not ``path`` (a diffusers
            download keeps ``text_encoder/`` and ``tokenizer/`` apart).
        use_attention_mask: mask the padding inside T5; CogVideoX encodes its captions
            without a mask (diffusers' ``CogVideoXPipeline``, the SAT ``FrozenT5Embedder``).
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int = 300,
        dtype: torch.dtype | str = torch.float32,
        tokenizer_path: str | Path | None = None,
        use_attention_mask: bool = True,
    ):
        super().__init__()
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"T5TextEncoder: {path} has no config.json; expected a local T5 checkpoint directory "
                "(config.json, model weights, tokenizer files), e.g. a download of DeepFloyd/t5-v1_1-xxl"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path or path, local_files_only=True
        )
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.model = T5EncoderModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.eval().requires_grad_(False)
        self.max_length = max_length
        self.output_dim = self.model.config.d_model
        self.use_attention_mask = use_attention_mask

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            captions,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.model.device
        input_ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        attention_mask = mask if self.use_attention_mask else None
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return rearrange(hidden, "b l c -> b 1 l c"), mask


class CaptionEncoder(TextEncoder):
    """A small trainable caption encoder for the synthetic world.

    Tokenisation is deterministic and needs no vocabulary file: a caption is
    lower-cased and split into words (``[a-z0-9]+``); each word becomes
    ``2 + crc32(word) % (vocab_size - 2)`` (ids 0 and 1 are padding and
    end-of-caption), followed by the end-of-caption token, so even the empty
    caption has one real token. Then token embedding + learned positions,
    ``num_layers`` pre-norm transformer encoder layers and a final LayerNorm.

    Args:
        vocab_size: size of the hashed vocabulary (collisions are possible but
            rare for the templated captions of the synthetic world).
        max_length: tokens per caption, end-of-caption included.
        output_dim: C.
        num_layers: transformer encoder layers.
        num_heads: attention heads.
    """

    PAD_ID = 0
    END_ID = 1

    def __init__(
        self,
        vocab_size: int = 4096,
        max_length: int = 32,
        output_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.output_dim = output_dim
        self.token_embedding = nn.Embedding(vocab_size, output_dim)
        self.position_embedding = nn.Parameter(torch.randn(max_length, output_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            output_dim,
            num_heads,
            dim_feedforward=4 * output_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(output_dim)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ``(ids [B, L] long, mask [B, L] long)``."""
        ids = torch.full((len(captions), self.max_length), self.PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(captions), self.max_length), dtype=torch.long)
        for row, caption in enumerate(captions):
            words = re.findall(r"[a-z0-9]+", caption.lower())[: self.max_length - 1]
            tokens = [2 + zlib.crc32(word.encode()) % (self.vocab_size - 2) for word in words]
            tokens.append(self.END_ID)
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(captions)
        device = self.token_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        tokens = self.token_embedding(ids) + self.position_embedding
        tokens = self.norm(self.layers(tokens, src_key_padding_mask=mask == 0))
        return rearrange(tokens, "b l c -> b 1 l c"), mask


def stack_text_embeddings(
    embeddings: Sequence[torch.Tensor], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precomputed per-caption embeddings -> ``(y [B, 1, max_length, C], mask [B, max_length] long)``.

    Each entry is ``[L_i, C]`` holding the real tokens only (e.g. a shard's
    ``t5.npy``); it is truncated to ``max_length`` and zero-padded after.
    """
    channels = embeddings[0].shape[-1]
    y = embeddings[0].new_zeros(len(embeddings), max_length, channels)
    mask = torch.zeros(len(embeddings), max_length, dtype=torch.long, device=y.device)
    for row, embedding in enumerate(embeddings):
        if embedding.ndim != 2 or embedding.shape[-1] != channels:
            raise ValueError(
                f"stack_text_embeddings: entry {row} has shape {tuple(embedding.shape)}; expected [L, {channels}]"
            )
        length = min(embedding.shape[0], max_length)
        y[row, :length] = embedding[:length]
        mask[row, :length] = 1
    return rearrange(y, "b l c -> b 1 l c"), mask
