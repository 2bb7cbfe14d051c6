"""Metrics: TrajError on the synthetic world, Fréchet maths and FVD, CLIPSIM on a tiny local CLIP."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tora.data.synthetic import WorldConfig, render_tracks
from tora.metrics import (
    CLIPSimilarity,
    CoTrackerTracker,
    FeatureStatistics,
    FrechetVideoDistance,
    I3DFeatureExtractor,
    LucasKanadeTracker,
    MaskCentroidTracker,
    MetricUnavailable,
    TrajError,
    build_clipsim,
    build_fvd,
    frechet_distance,
    fvd,
    trajectory_error,
)

# The I3D and CoTracker files are TorchScript, which torch now calls deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

# ---------------------------------------------------------------------------
# TrajError


def test_trajectory_error_is_the_mean_euclidean_distance():
    requested = np.random.default_rng(0).uniform(0, 64, size=(3, 5, 2))
    result = trajectory_error(requested, requested + [3.0, 4.0], video_size=(64, 64))
    assert result.mean == pytest.approx(5.0)  # Euclidean per point, not |dx| + |dy| = 7
    assert result.per_track.shape == (3,) and result.per_frame.shape == (5,)
    np.testing.assert_allclose(result.per_track, 5.0)
    np.testing.assert_allclose(result.per_frame, 5.0)
    assert result.coverage == 1.0 and result.reference_size == (64, 64)
    assert result.as_dict()["mean"] == pytest.approx(5.0)
    assert len(result.as_dict()["per_frame"]) == 5


def test_trajectory_error_rescales_to_the_reference_size():
    requested = np.zeros((2, 4, 2))
    recovered = requested + [3.0, 4.0]
    # A 64 x 32 video reported at 128 x 128: x offsets x2, y offsets x4.
    result = trajectory_error(requested, recovered, video_size=(64, 32), reference_size=(128, 128))
    assert result.mean == pytest.approx(math.hypot(6.0, 16.0))
    assert result.reference_size == (128, 128)
    halved = trajectory_error(requested, recovered, video_size=(64, 64), reference_size=(32, 32))
    assert halved.mean == pytest.approx(2.5)


def test_trajectory_error_per_frame_per_track_and_missing_points():
    requested = np.zeros((2, 3, 2))
    recovered = np.zeros((2, 3, 2))
    recovered[0, :, 0] = [0.0, 1.0, 2.0]  # track 0 drifts right by 1 px per frame
    recovered[1] = np.nan  # track 1 never found
    result = trajectory_error(requested, recovered, video_size=(8, 8))
    assert result.mean == pytest.approx(1.0)
    np.testing.assert_allclose(result.per_frame, [0.0, 1.0, 2.0])  # frame 0 included
    assert result.per_track[0] == pytest.approx(1.0) and np.isnan(result.per_track[1])
    assert result.coverage == pytest.approx(0.5)
    only_last = trajectory_error(
        requested, recovered, (8, 8), valid=np.array([[False, False, True]] * 2)
    )
    assert only_last.mean == pytest.approx(2.0) and only_last.coverage == pytest.approx(0.5)


def test_trajectory_error_shape_errors():
    with pytest.raises(ValueError, match=r"\[N, T, 2\].*\[2, 3, 2\] and \[2, 4, 2\]"):
        trajectory_error(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)), (8, 8))
    with pytest.raises(ValueError, match=r"valid \[N, T\] = \[2, 3\] expected, got \[3, 2\]"):
        trajectory_error(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), (8, 8), valid=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"requested: tracks \[N, T=17, 2\].*\[2, 5, 2\]"):
        TrajError()(np.zeros((17, 8, 8, 3), np.uint8), np.zeros((2, 5, 2)))


# Two objects that stay apart and inside a 64 x 64 frame (circumradius <= 10.3 px).
FRAMES = np.arange(17)
SYNTHETIC_TRACKS = np.stack(
    [
        np.stack([14 + 2.25 * FRAMES, 16 + 0.0 * FRAMES], axis=1),
        np.stack([50 - 2.0 * FRAMES, 47 + 2 * np.sin(FRAMES / 3)], axis=1),
    ]
)
# Saturated colours only (white/black can match a background), no spin and smooth
# backgrounds: Lucas-Kanade is a translation tracker, and rotation or hard-edged
# textures next to a 5-10 px object bias it by tenths of a pixel at 64².
SYNTHETIC_WORLD = WorldConfig(
    object_size=(0.08, 0.16),
    pan_probability=0.3,
    colors=["red", "green", "blue", "yellow", "orange", "purple", "cyan", "magenta"],
    backgrounds=["gradient", "blobs"],
    max_spin=0.0,
)
LAG = np.where(FRAMES[:, None] > 0, [3.0, 4.0], 0.0)  # [T, 2]: (3, 4) from frame 1 on


def _trackers(meta):
    return {
        "mask_centroid": MaskCentroidTracker.for_synthetic_clip(meta),
        "lucas_kanade": LucasKanadeTracker(window_size=11, max_level=2),
    }


@pytest.mark.parametrize("tracker_name", ["mask_centroid", "lucas_kanade"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_traj_error_on_videos_rendered_along_the_tracks(tracker_name, seed):
    clip = render_tracks(SYNTHETIC_TRACKS, SYNTHETIC_WORLD, seed=seed)
    metric = TrajError(_trackers(clip.meta)[tracker_name])
    exact = metric(clip.frames, SYNTHETIC_TRACKS)
    assert exact.mean < 0.5 and exact.coverage == 1.0
    assert exact.per_track.shape == (2,) and exact.per_frame.shape == (17,)

    # Requested tracks 5 px away from frame 1 on; frame 0 is where a point tracker starts.
    lagging = metric(clip.frames, SYNTHETIC_TRACKS + LAG)
    assert lagging.mean == pytest.approx(5.0 * 16 / 17, abs=0.5)
    assert np.all(np.abs(lagging.per_frame[1:] - 5.0) < 1.0)
    assert lagging.per_frame[0] < 0.5


def test_traj_error_accepts_a_float_video():
    clip = render_tracks(SYNTHETIC_TRACKS, SYNTHETIC_WORLD, seed=0)
    video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W]
    metric = TrajError(MaskCentroidTracker.for_synthetic_clip(clip.meta))
    assert metric(video, SYNTHETIC_TRACKS).mean == metric(clip.frames, SYNTHETIC_TRACKS).mean
    assert metric(video[None], SYNTHETIC_TRACKS).mean == metric(clip.frames, SYNTHETIC_TRACKS).mean


def test_mask_centroid_tracker_reports_absent_objects():
    clip = render_tracks(SYNTHETIC_TRACKS, SYNTHETIC_WORLD, seed=0)
    frames = clip.frames.copy()
    frames[5:] = frames[0, 0, 0]  # both objects vanish from frame 5 on
    tracker = MaskCentroidTracker.for_synthetic_clip(clip.meta)
    tracks, found = tracker.track_with_status(frames, SYNTHETIC_TRACKS[:, 0])
    assert found[:, :5].all() and not found[:, 5:].any()
    assert np.isnan(tracks[:, 5:]).all()
    result = TrajError(tracker)(frames, SYNTHETIC_TRACKS)
    assert result.coverage == pytest.approx(5 / 17) and result.mean < 0.5
    with pytest.raises(ValueError, match="one per colour expected \\(2\\), got 3"):
        tracker.track(frames, np.zeros((3, 2)))


def test_mask_centroid_tracker_ignores_stray_specks_of_the_colour():
    """A generated video can hold specks of an object's colour away from it: only
    the largest blob is the object."""
    clip = render_tracks(SYNTHETIC_TRACKS, SYNTHETIC_WORLD, seed=0)
    frames = clip.frames.copy()
    colour = np.array(MaskCentroidTracker.for_synthetic_clip(clip.meta).colors[0])
    frames[:, 60:63, 1:4] = colour.astype(np.uint8)  # a 3 x 3 speck in the bottom-left corner
    robust = MaskCentroidTracker.for_synthetic_clip(clip.meta)
    naive = MaskCentroidTracker(robust.colors, largest_component=False)
    assert TrajError(robust)(frames, SYNTHETIC_TRACKS).mean < 0.5
    assert TrajError(naive)(frames, SYNTHETIC_TRACKS).per_track[0] > 2.0


def test_lucas_kanade_flags_lost_points_and_holds_them():
    video = np.full((4, 32, 32, 3), 128, np.uint8)  # textureless: nothing to track
    tracks, found = LucasKanadeTracker(window_size=9, max_level=1).track_with_status(
        video, np.array([[10.0, 12.0]])
    )
    assert found.tolist() == [[True, False, False, False]]
    np.testing.assert_allclose(tracks[0], [[10.0, 12.0]] * 4)

    # An object leaving the frame on the right, 3 px per frame: lost at x > 63.5.
    leaving = np.stack([40 + 3.0 * FRAMES[:10], np.full(10, 30.0)], axis=1)[None]
    clip = render_tracks(leaving, SYNTHETIC_WORLD, seed=0)
    tracker = LucasKanadeTracker(window_size=11, max_level=2)
    tracks, found = tracker.track_with_status(clip.frames, leaving[:, 0])
    assert found.tolist() == [[True] * 8 + [False] * 2]
    np.testing.assert_allclose(tracks[0, :7], leaving[0, :7], atol=0.1)
    np.testing.assert_array_equal(tracks[0, 8:], tracks[0, [7, 7]])  # held where last found


class EchoQueryCoTracker(nn.Module):
    """CoTracker's call convention: each query point moved by (t, 2t) in frame t; the
    last frame invisible. Fails unless the video is [1, T, 3, H, W] in 0-255."""

    def forward(
        self, video: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        torch._assert(video.dim() == 5 and video.shape[2] == 3, "video [1, T, 3, H, W] expected")
        torch._assert(bool(video.max() > 1.0), "video in 0-255 expected")
        torch._assert(bool((queries[..., 0] == 0).all()), "queries at frame 0 expected")
        steps = torch.arange(video.shape[1], dtype=video.dtype)
        offsets = torch.stack([steps, 2 * steps], dim=-1)  # [T, 2]
        tracks = queries[:, None, :, 1:] + offsets[None, :, None, :]  # [1, T, N, 2]
        visibility = torch.ones(tracks.shape[:3], dtype=torch.bool)
        visibility[:, -1] = False
        return tracks, visibility


def test_cotracker_call_convention(tmp_path):
    path = tmp_path / "cotracker.pt"
    torch.jit.script(EchoQueryCoTracker()).save(str(path))
    clip = render_tracks(SYNTHETIC_TRACKS, SYNTHETIC_WORLD, seed=0)
    tracker = CoTrackerTracker(path)
    tracks, visible = tracker.track_with_status(clip.frames, SYNTHETIC_TRACKS[:, 0])
    assert tracks.shape == (2, 17, 2) and visible.shape == (2, 17)
    expected = SYNTHETIC_TRACKS[:, :1] + np.stack([FRAMES, 2 * FRAMES], axis=1)[None]
    np.testing.assert_allclose(tracks, expected, atol=1e-5)
    assert visible[:, :-1].all() and not visible[:, -1].any()


def test_cotracker_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_cotracker.pt"):
        CoTrackerTracker(tmp_path / "no_such_cotracker.pt")


# ---------------------------------------------------------------------------
# Fréchet distance and FVD


def test_frechet_distance_one_dimensional_gaussians():
    m1, s1, m2, s2 = 1.5, 4.0, -0.5, 0.25
    expected = (m1 - m2) ** 2 + s1 + s2 - 2 * math.sqrt(s1 * s2)
    assert frechet_distance([m1], [[s1]], [m2], [[s2]]) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_diagonal_and_non_commuting_covariances():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    v1, v2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.5, 3.0])
    expected = np.sum((mu1 - mu2) ** 2 + v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)

    # 2 x 2, S1 S2 != S2 S1: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2.
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
    product = s1 @ s2
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    expected = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    zeros = np.zeros(2)
    assert frechet_distance(zeros, s1, zeros, s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(zeros, s2, zeros, s1) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_singular_covariances_is_stable():
    features = np.random.default_rng(0).normal(size=(5, 40))  # rank 4 covariance in 40-D
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    nudged = sigma - 1e-12 * np.eye(40)  # tiny negative eigenvalues
    assert abs(frechet_distance(mu, nudged, mu, sigma)) < 1e-6
    with pytest.raises(ValueError, match=r"mu1 \[3\], sigma1 \[3, 3\], mu2 \[3\], sigma2 \[2, 2\]"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_feature_statistics_streaming_matches_numpy():
    features = np.random.default_rng(0).normal(loc=1e4, scale=0.5, size=(37, 6))
    statistics = FeatureStatistics()
    for chunk in np.array_split(features, [1, 10, 11, 30]):
        statistics.update(chunk)
    assert statistics.count == 37
    np.testing.assert_allclose(statistics.mean.numpy(), features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        statistics.covariance.numpy(), np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12
    )
    with pytest.raises(ValueError, match="at least 2 feature rows, got 1"):
        _ = FeatureStatistics().update(features[:1]).covariance
    with pytest.raises(ValueError, match=r"features: \[B, 6\] expected, got \[2, 5\]"):
        statistics.update(np.zeros((2, 5)))


class PooledVideoFeatures(nn.Module):
    """The I3D TorchScript's signature; fails unless called like FVD calls I3D."""

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = True,
        resize: bool = True,
        return_features: bool = False,
    ) -> torch.Tensor:
        torch._assert(not rescale and not resize and return_features, "FVD keyword arguments")
        torch._assert(
            x.dim() == 5
            and x.shape[1] == 3
            and x.shape[2] == 16
            and x.shape[3] == 224
            and x.shape[4] == 224,
            "[B, 3, 16, 224, 224] expected",
        )
        torch._assert(bool(x.min() >= -1.0) and bool(x.max() <= 1.0), "[-1, 1] expected")
        pooled = F.adaptive_avg_pool3d(x, [2, 2, 2]).flatten(1)  # [B, 24]
        return torch.cat([pooled, pooled.square()], dim=1)


@pytest.fixture(scope="module")
def feature_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(PooledVideoFeatures()).save(str(path))
    return path


def _random_videos(seed, count=6, frames=17, size=(48, 64)):
    return np.random.default_rng(seed).integers(
        0, 256, size=(count, frames, *size, 3), dtype=np.uint8
    )


def test_fvd_of_a_set_against_itself_is_zero(feature_model_path):
    extractor = I3DFeatureExtractor(feature_model_path)
    videos = _random_videos(0)
    assert abs(fvd(videos, videos, extractor, batch_size=4)) < 1e-6
    # A list of single videos, a float batch and precomputed statistics agree.
    as_float = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    metric = FrechetVideoDistance(extractor, batch_size=4)
    real_statistics = metric.statistics(list(videos))
    assert real_statistics.count == 6
    assert abs(metric(real_statistics, as_float)) < 1e-6
    assert fvd(videos, _random_videos(1), extractor) > 1e-4
    darker = (videos // 2).astype(np.uint8)
    assert fvd(videos, darker, extractor) > 10 * fvd(videos, _random_videos(1), extractor)


def test_i3d_preprocessing(feature_model_path):
    extractor = I3DFeatureExtractor(feature_model_path)
    videos = _random_videos(0, count=2, frames=20, size=(48, 64))
    batch = extractor.preprocess(videos)
    assert batch.shape == (2, 3, 16, 224, 224)
    assert batch.min() >= -1 and batch.max() <= 1
    assert extractor(videos).shape == (2, 48)
    # The first 16 frames: frames after the 16th do not matter.
    changed = videos.copy()
    changed[:, 16:] = 0
    torch.testing.assert_close(extractor(changed), extractor(videos))
    with pytest.raises(ValueError, match="at least 16 frames expected .*got 9"):
        extractor.preprocess(videos[:, :9])
    uniform = I3DFeatureExtractor(feature_model_path, frame_sampling="uniform")
    assert uniform.preprocess(videos[:, :9]).shape == (2, 3, 16, 224, 224)


def test_fvd_unavailable_and_missing_model(tmp_path):
    metric = build_fvd(None)
    assert isinstance(metric, MetricUnavailable) and not metric.available
    assert metric(None, None) is metric
    assert metric.as_dict() == {
        "available": False,
        "reason": "no I3D TorchScript configured: set metrics.i3d_path",
    }
    with pytest.raises(FileNotFoundError, match="no_such_i3d.pt"):
        build_fvd(tmp_path / "no_such_i3d.pt")


# ---------------------------------------------------------------------------
# CLIPSIM

WORDS = ["a", "red", "blue", "circle", "square", "moves", "left", "right"]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised 1-layer CLIP (32² images, 8 px patches), a word-level
    tokenizer with CLIP's special tokens and a 32² image processor, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_clip")
    special = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<|unk|>": 2}
    vocab = special | {word: i + len(special) for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
        model_max_length=16,
    ).save_pretrained(path)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


def test_clipsim_per_frame_scores(tiny_clip_dir):
    metric = CLIPSimilarity(tiny_clip_dir, frame_batch_size=3)
    video = np.random.default_rng(0).integers(0, 256, size=(5, 40, 48, 3), dtype=np.uint8)
    video[3] = video[1]
    scores = metric.per_frame(video, "a red circle moves left")
    assert scores.shape == (5,) and scores.dtype == torch.float32
    assert (scores.abs() <= 1).all()
    assert scores[3] == scores[1] and scores[0] != scores[1]
    torch.testing.assert_close(
        CLIPSimilarity(tiny_clip_dir).per_frame(video, "a red circle moves left"), scores
    )
    assert not torch.allclose(metric.per_frame(video, "a blue square"), scores)
    as_float = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(metric.per_frame(as_float, "a red circle moves left"), scores)


def test_clipsim_is_the_clip_cosine(tiny_clip_dir):
    """Cross-check against CLIPModel's own logits: logit_scale.exp() * cosine."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    video = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clip_dir)(
        ["a blue square moves right"], return_tensors="pt"
    )
    pixels = CLIPImageProcessor.from_pretrained(tiny_clip_dir)(
        images=list(video), return_tensors="pt"
    )
    with torch.no_grad():
        output = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=pixels["pixel_values"],
        )
        expected = output.logits_per_image[:, 0] / model.logit_scale.exp()
    metric = CLIPSimilarity(tiny_clip_dir)
    torch.testing.assert_close(metric.per_frame(video, "a blue square moves right"), expected)
    set_score = metric([video, video[::-1].copy()], ["a blue square moves right"] * 2)
    assert set_score == pytest.approx(float(expected.mean()), abs=1e-6)


def test_clipsim_errors_and_unavailable(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match="no_such_clip has no config.json"):
        CLIPSimilarity(tmp_path / "no_such_clip")
    with pytest.raises(ValueError, match="got 2 videos and 1 captions"):
        CLIPSimilarity(tiny_clip_dir)([np.zeros((2, 8, 8, 3), np.uint8)] * 2, ["a"])
    metric = build_clipsim(None)
    assert isinstance(metric, MetricUnavailable)
    assert metric.as_dict() == {
        "available": False,
        "reason": "no CLIP model configured: set metrics.clip_path",
    }
