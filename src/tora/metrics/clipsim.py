"""CLIPSIM: mean per-frame cosine similarity between a caption and the frames of a video.

Each frame and the caption are embedded by CLIP (image and text projections);
the score of a video is the mean over its frames of the cosine similarity, a
number in [-1, 1] (Tora's table reports e.g. 0.2358; no x100 and no clipping at 0,
unlike CLIP-Score). The score of a set is the mean over its videos.

CLIP is read with ``transformers`` from a local directory (``config.json``,
weights, tokenizer files and ``preprocessor_config.json``, e.g. a download of
``openai/clip-vit-base-patch32``); frames go through its ``CLIPImageProcessor``
(short side resize, centre crop, CLIP normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tora.metrics.base import MetricUnavailable, VideoLike
from tora.utils.video import as_uint8_frames


class CLIPSimilarity:
    """CLIPSIM with a local CLIP.

    Args:
        path: the CLIP directory.
        device: where CLIP runs.
        frame_batch_size: frames per image-encoder call.
    """

    available = True

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", frame_batch_size: int = 32
    ):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"CLIPSimilarity: {path} has no config.json; expected a local CLIP directory "
                "(config.json, weights, tokenizer files, preprocessor_config.json), e.g. a download "
                "of openai/clip-vit-base-patch32"
            )
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.image_processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        self.max_text_length = self.model.config.text_config.max_position_embeddings
        self.frame_batch_size = frame_batch_size

    @torch.no_grad()
    def _text_embedding(self, caption: str) -> torch.Tensor:
        tokens = self.tokenizer(
            [caption], truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return F.normalize(output.pooler_output.float(), dim=-1)[0]

    @torch.no_grad()
    def _image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        pixel_values = self.image_processor(
            images=list(frames), input_data_format="channels_last", return_tensors="pt"
        )["pixel_values"]
        output = self.model.get_image_features(pixel_values=pixel_values.to(self.device))
        return F.normalize(output.pooler_output.float(), dim=-1)

    def per_frame(self, video: VideoLike, caption: str) -> torch.Tensor:
        """``[T]`` cosine similarities (CPU float32) of one video's frames with ``caption``.

        ``video``: uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]`` in [-1, 1].
        """
        frames = as_uint8_frames(video)
        text = self._text_embedding(caption)
        images = torch.cat(
            [
                self._image_embeddings(frames[start : start + self.frame_batch_size])
                for start in range(0, len(frames), self.frame_batch_size)
            ]
        )
        return (images @ text).cpu()

    def __call__(self, videos: Sequence[VideoLike], captions: Sequence[str]) -> float:
        """CLIPSIM of a set: the mean over videos of their mean per-frame similarity.

        ``videos``: one video per caption (a list, or a float batch ``[B, 3, T, H, W]``).
        """
        if len(videos) != len(captions) or len(videos) == 0:
            raise ValueError(
                f"CLIPSimilarity: one caption per video (at least one) expected, got {len(videos)} videos "
                f"and {len(captions)} captions"
            )
        scores = [self.per_frame(video, caption).mean() for video, caption in zip(videos, captions)]
        return float(torch.stack(scores).mean())


def build_clipsim(clip_path: str | Path | None, **kwargs) -> CLIPSimilarity | MetricUnavailable:
    """The CLIPSIM metric, or :class:`MetricUnavailable` when no CLIP is configured.

    A configured path that does not exist is an error, not "unavailable".
    """
    if clip_path is None:
        return MetricUnavailable("clipsim", "no CLIP model configured: set metrics.clip_path")
    return CLIPSimilarity(clip_path, **kwargs)
