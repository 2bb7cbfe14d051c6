"""Motion-guidance Fusers (MGF): inject a motion feature into DiT hidden states.

Tora (arXiv 2407.21705, Sec. 3.2 and Table 4) compares three ways to fuse the
Trajectory Extractor's feature ``f`` into the hidden states ``h`` of a DiT
block; each one here starts as the exact identity (a zero-initialised last
layer), so adding Tora to a pretrained backbone does not change its output
before training:

- ``AdaptiveNormFuser`` (the paper's winner): ``h + gamma(f) * h + beta(f)``;
- ``ChannelConcatFuser``: ``h + MLP([h, f])``;
- ``CrossAttentionFuser``: ``h + Attention(q=LN(h), k=v=f)`` within each latent frame.

``MotionGuidance`` holds the Trajectory Extractor and one fuser per hosting
block and turns motion latents into the ``fuse`` callback STDiT3 calls at the
entry of every block.

Hidden states are tokens ``[B, T*S, C]`` ordered ``(t, h, w)`` with ``S = H*W``
(the STDiT3 token grid); features are ``[B, Cf, T, H, W]`` on the same grid.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tora.models.trajectory_extractor import TrajectoryExtractor

FUSER_PLACEMENTS = ("temporal", "spatial", "both")

FuseCallback = Callable[[torch.Tensor, str, int, int, int, int], torch.Tensor]


class MotionFuser(nn.Module):
    """Interface: ``forward(h [B, T*S, C], feature [B, Cf, T, H, W], T, H, W) -> h [B, T*S, C]``."""

    def forward(
        self, h: torch.Tensor, feature: torch.Tensor, T: int, H: int, W: int
    ) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def check_shapes(h: torch.Tensor, feature: torch.Tensor, T: int, H: int, W: int) -> None:
        if (
            h.shape[1] != T * H * W
            or tuple(feature.shape[2:]) != (T, H, W)
            or feature.shape[0] != h.shape[0]
        ):
            raise ValueError(
                f"fuser: hidden states {tuple(h.shape)} and motion feature {tuple(feature.shape)} "
                f"do not match the token grid (T, H, W) = {(T, H, W)}; expected [B, {T * H * W}, C] "
                f"and [B, Cf, {T}, {H}, {W}]"
            )


def _zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class SpatioTemporalConv(nn.Module):
    """A 3x3 conv over (h, w) per frame, then a kernel-3 conv over t per position.

    The temporal conv is zero-initialised, so the output starts at exactly 0.
    Replicate padding in time follows the alibaba/Tora port (``MGF``).

    Shapes: ``[B, Cin, T, H, W] -> [B, T*H*W, Cout]`` (tokens, ordered ``(t, h, w)``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.spatial = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.temporal = _zero_init(
            nn.Conv1d(
                mid_channels, out_channels, kernel_size=3, padding=1, padding_mode="replicate"
            )
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        batch, _, _, height, width = feature.shape
        x = self.spatial(rearrange(feature, "b c t h w -> (b t) c h w"))
        x = self.temporal(rearrange(x, "(b t) c h w -> (b h w) c t", b=batch))
        return rearrange(x, "(b h w) c t -> b (t h w) c", b=batch, h=height, w=width)


class AdaptiveNormFuser(MotionFuser):
    """``h + gamma(f) * n(h) + beta(f)``, with ``n`` the identity or a per-frame GroupNorm.

    ``normalize_hidden=False`` is the paper's form ``h + gamma*h + beta``;
    ``normalize_hidden=True`` is the alibaba/Tora port's ``h + GN(h)*gamma + beta``
    (GroupNorm over channel groups and all tokens of one latent frame, computed
    in float32). gamma and beta each come from a ``SpatioTemporalConv`` whose
    temporal conv is zero-initialised, so the fuser starts as the identity.

    Args:
        hidden_size: DiT hidden size C.
        feature_channels: motion feature channels Cf.
        normalize_hidden: use the port's GroupNorm on h (see above).
        mid_channels: channels between the spatial and temporal conv
            (default ``hidden_size // 4``, as in the port).
        num_groups: GroupNorm groups when ``normalize_hidden``.
    """

    def __init__(
        self,
        hidden_size: int,
        feature_channels: int,
        normalize_hidden: bool = False,
        mid_channels: int | None = None,
        num_groups: int = 32,
    ):
        super().__init__()
        mid_channels = mid_channels or max(hidden_size // 4, 1)
        self.gamma = SpatioTemporalConv(feature_channels, mid_channels, hidden_size)
        self.beta = SpatioTemporalConv(feature_channels, mid_channels, hidden_size)
        self.norm = None
        if normalize_hidden:
            if hidden_size % num_groups != 0:
                raise ValueError(
                    f"AdaptiveNormFuser: hidden_size={hidden_size} must be divisible by num_groups={num_groups}"
                )
            self.norm = nn.GroupNorm(num_groups, hidden_size)

    def normalize(self, h: torch.Tensor, T: int) -> torch.Tensor:
        if self.norm is None:
            return h
        frames = rearrange(h, "b (t s) c -> (b t) c s", t=T)
        weight, bias = self.norm.weight.float(), self.norm.bias.float()  # bf16 models too
        frames = F.group_norm(frames.float(), self.norm.num_groups, weight, bias, self.norm.eps)
        frames = frames.to(h.dtype)
        return rearrange(frames, "(b t) c s -> b (t s) c", t=T)

    def forward(
        self, h: torch.Tensor, feature: torch.Tensor, T: int, H: int, W: int
    ) -> torch.Tensor:
        self.check_shapes(h, feature, T, H, W)
        return h + self.gamma(feature) * self.normalize(h, T) + self.beta(feature)


class ChannelConcatFuser(MotionFuser):
    """``h + MLP([h, f])`` per token; the MLP's last linear is zero-initialised.

    Args:
        hidden_size: DiT hidden size C.
        feature_channels: motion feature channels Cf.
        mlp_ratio: MLP width as a multiple of C.
    """

    def __init__(self, hidden_size: int, feature_channels: int, mlp_ratio: float = 1.0):
        super().__init__()
        width = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size + feature_channels, width),
            nn.GELU(approximate="tanh"),
            _zero_init(nn.Linear(width, hidden_size)),
        )

    def forward(
        self, h: torch.Tensor, feature: torch.Tensor, T: int, H: int, W: int
    ) -> torch.Tensor:
        self.check_shapes(h, feature, T, H, W)
        feature_tokens = rearrange(feature, "b c t h w -> b (t h w) c")
        return h + self.mlp(torch.cat([h, feature_tokens], dim=-1))


class CrossAttentionFuser(MotionFuser):
    """``h + proj(Attention(q=LN(h), k=v=f))``, attention within each latent frame.

    The tokens of latent frame t attend to the motion feature of the same frame
    (``"b (t s) c -> (b t) s c"``); the output projection is zero-initialised.

    Args:
        hidden_size: DiT hidden size C.
        feature_channels: motion feature channels Cf.
        num_heads: attention heads (must divide C).
    """

    def __init__(self, hidden_size: int, feature_channels: int, num_heads: int = 8):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"CrossAttentionFuser: hidden_size={hidden_size} must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(feature_channels, 2 * hidden_size)
        self.proj = _zero_init(nn.Linear(hidden_size, hidden_size))

    def forward(
        self, h: torch.Tensor, feature: torch.Tensor, T: int, H: int, W: int
    ) -> torch.Tensor:
        self.check_shapes(h, feature, T, H, W)
        queries = rearrange(self.norm(h), "b (t s) c -> (b t) s c", t=T)
        feature_tokens = rearrange(feature, "b c t h w -> (b t) (h w) c")
        q = rearrange(self.q(queries), "n s (heads d) -> n heads s d", heads=self.num_heads)
        k, v = rearrange(
            self.kv(feature_tokens),
            "n s (two heads d) -> two n heads s d",
            two=2,
            heads=self.num_heads,
        )
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = rearrange(attended, "(b t) heads s d -> b (t s) (heads d)", t=T)
        return h + self.proj(attended)


FUSERS: dict[str, type[MotionFuser]] = {
    "adaptive_norm": AdaptiveNormFuser,
    "channel_concat": ChannelConcatFuser,
    "cross_attn": CrossAttentionFuser,
}


def build_fuser(kind: str, hidden_size: int, feature_channels: int, **kwargs) -> MotionFuser:
    """Construct a fuser by name (``adaptive_norm``, ``channel_concat``, ``cross_attn``)."""
    if kind not in FUSERS:
        raise ValueError(f"unknown fuser kind {kind!r}; valid options: {', '.join(FUSERS)}")
    return FUSERS[kind](hidden_size, feature_channels, **kwargs)


def fuser_blocks(placement: str, depth: int) -> list[tuple[str, int]]:
    """The (kind, index) of every STDiT3 block hosting a fuser, in forward order.

    STDiT3 runs ``spatial_blocks[i]`` then ``temporal_blocks[i]`` for i in
    ``range(depth)``; the paper places the fusers in the temporal blocks.
    """
    if placement not in FUSER_PLACEMENTS:
        raise ValueError(
            f"unknown fuser placement {placement!r}; valid options: {', '.join(FUSER_PLACEMENTS)}"
        )
    kinds = ("spatial", "temporal") if placement == "both" else (placement,)
    return [(kind, index) for index in range(depth) for kind in kinds]


class MotionGuidance(nn.Module):
    """Trajectory Extractor + one fuser per hosting block (keyed ``"<kind>_<index>"``).

    ``extract(motion_latents)`` gives the motion features, one per entry of
    ``self.blocks``; ``make_fuse_callback(features)`` turns them into the
    ``fuse(h, kind, index, T, H, W)`` callable STDiT3 calls at every block entry.

    Args:
        hidden_size: DiT hidden size C.
        depth: number of STDiT3 spatial (= temporal) blocks.
        fuser: fuser kind, see ``build_fuser``.
        placement: ``"temporal"`` (paper), ``"spatial"`` or ``"both"``.
        latent_channels: channels of the motion latents (the TE's ``in_channels``).
        patch_size, feature_channels, blocks_per_level, num_groups: the ``TrajectoryExtractor``'s.
        fuser_kwargs: extra keyword arguments for every fuser.
    """

    def __init__(
        self,
        hidden_size: int,
        depth: int,
        fuser: str = "adaptive_norm",
        placement: str = "temporal",
        latent_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        feature_channels: int = 128,
        blocks_per_level: int = 2,
        num_groups: int = 32,
        fuser_kwargs: dict | None = None,
    ):
        super().__init__()
        self.blocks = fuser_blocks(placement, depth)
        self.extractor = TrajectoryExtractor(
            in_channels=latent_channels,
            patch_size=patch_size,
            feature_channels=feature_channels,
            num_features=len(self.blocks),
            blocks_per_level=blocks_per_level,
            num_groups=num_groups,
        )
        self.fusers = nn.ModuleDict(
            {
                f"{kind}_{index}": build_fuser(
                    fuser, hidden_size, feature_channels, **(fuser_kwargs or {})
                )
                for kind, index in self.blocks
            }
        )

    def extract(self, motion_latents: torch.Tensor) -> list[torch.Tensor]:
        """``[B, Cm, T, h, w]`` -> one ``[B, Cf, T, H_tok, W_tok]`` feature per hosting block."""
        return self.extractor(motion_latents)

    def make_fuse_callback(self, features: list[torch.Tensor]) -> FuseCallback:
        """The ``fuse`` callable for ``STDiT3.forward``; identity on blocks without a fuser."""
        if len(features) != len(self.blocks):
            raise ValueError(
                f"MotionGuidance: got {len(features)} motion features, expected {len(self.blocks)} "
                f"(one per block in {self.blocks})"
            )
        feature_of_block = dict(zip(self.blocks, features))

        def fuse(h: torch.Tensor, kind: str, index: int, T: int, H: int, W: int) -> torch.Tensor:
            feature = feature_of_block.get((kind, index))
            if feature is None:
                return h
            return self.fusers[f"{kind}_{index}"](h, feature, T, H, W)

        return fuse
