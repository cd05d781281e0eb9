"""3D image encoders: MEDIMP's CLIP-style ResNet-50 and compact MONAI ResNets for CPU use.

Every encoder maps ``(B, C, z, y, x)`` to ``(B, output_dim)`` and exposes

* ``output_dim``: size of its feature vector;
* ``gradcam_layer``: dotted name (for ``get_submodule``) of its last convolutional stage, the layer
  Grad-CAM should hook.

The CLIP-style network is a 3D transcription of OpenAI CLIP's ``ModifiedResNet`` as described in
MEDIMP (Milecki et al., MIDL 2023): a stem of three 3x3x3 convolutions and an average pool,
anti-aliased bottleneck stages (a stride is an ``AvgPool3d`` after the 3x3x3 convolution, never a
strided convolution) and attention pooling over the final grid with the mean token as query.
All average pools use ``ceil_mode`` so that the feature grid is ``ceil(size / 32)`` per axis
(z, y, x) = 192x144x96 -> 6x5x3; MEDIMP's 96x144x192 is NIfTI (x, y, z) order).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..preprocess import PAPER_INPUT_SIZE

__all__ = [
    "AntiAliasPool3d",
    "AttentionPool3d",
    "Bottleneck3D",
    "ClipResNet3D",
    "MonaiResNetEncoder",
    "available_image_encoders",
    "build_image_encoder",
    "clip_resnet50_3d",
    "feature_grid",
]



def _triple(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (size, size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise ValueError(f"expected a 3D size (z, y, x), got {size}")
    return size  # type: ignore[return-value]


def feature_grid(input_size: int | Sequence[int], n_halvings: int = 5) -> tuple[int, int, int]:
    """Feature grid of :class:`ClipResNet3D` for an input of ``input_size`` (total stride ``2**n_halvings``).

    Each halving (stride-2 stem conv, stem pool, three strided stages) maps ``n`` to ``ceil(n / 2)``.
    """
    grid = []
    for n in _triple(input_size):
        for _ in range(n_halvings):
            n = (n + 1) // 2
        grid.append(n)
    return tuple(grid)  # type: ignore[return-value]


class AntiAliasPool3d(nn.AvgPool3d):
    """``AvgPool3d(k, ceil_mode=True)`` that also accepts axes shorter than the kernel.

    With ``ceil_mode`` a partial window averages only its valid voxels, so an axis shorter than the
    kernel becomes one output equal to its mean; plain ``AvgPool3d`` refuses that case, which
    matters for the small test inputs and for thin volumes.
    """

    def __init__(self, kernel_size: int):
        super().__init__(kernel_size, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _triple(self.kernel_size)
        n = x.shape[-3:]
        if all(ni >= ki for ni, ki in zip(n, k, strict=True)):
            return super().forward(x)
        kernel = tuple(min(ki, ni) for ki, ni in zip(k, n, strict=True))
        stride = tuple(ki if ni >= ki else ni for ki, ni in zip(k, n, strict=True))
        return F.avg_pool3d(x, kernel, stride, ceil_mode=True)


class Bottleneck3D(nn.Module):
    """Anti-aliased 3D bottleneck: 1x1x1 -> 3x3x3 -> [AvgPool3d(stride)] -> 1x1x1, expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = AntiAliasPool3d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", AntiAliasPool3d(stride) if stride > 1 else nn.Identity()),
                        ("0", nn.Conv3d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm3d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


class AttentionPool3d(nn.Module):
    """CLIP attention pooling over a 3D grid.

    Tokens are the flattened grid positions with their mean prepended; a learnable positional
    embedding sized for ``grid`` (+1 for the mean token) is added, and multi-head attention with
    the mean token as the only query gives one vector, projected to ``output_dim``. For another
    grid at run time the spatial part of the positional embedding is resized trilinearly.
    """

    def __init__(self, grid: Sequence[int], embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.grid = _triple(grid)
        self.num_heads = num_heads
        n_tokens = math.prod(self.grid) + 1
        self.positional_embedding = nn.Parameter(torch.randn(n_tokens, embed_dim) / embed_dim**0.5)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        std = embed_dim**-0.5
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(proj.weight, std=std)
            nn.init.zeros_(proj.bias)

    def positional_embedding_for(self, grid: Sequence[int]) -> torch.Tensor:
        """Positional embedding ``(1 + prod(grid), C)`` for ``grid`` (interpolated if it differs)."""
        grid = _triple(grid)
        pos = self.positional_embedding
        if grid == self.grid:
            return pos
        cls_pos, spatial = pos[:1], pos[1:]
        spatial = spatial.T.reshape(1, -1, *self.grid)
        spatial = F.interpolate(spatial, size=grid, mode="trilinear", align_corners=False)
        spatial = spatial.reshape(spatial.shape[1], -1).T
        return torch.cat([cls_pos, spatial], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        grid = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding_for(grid).to(tokens.dtype)
        h, d = self.num_heads, c // self.num_heads
        q = self.q_proj(tokens[:, :1]).view(b, 1, h, d).transpose(1, 2)
        k = self.k_proj(tokens).view(b, -1, h, d).transpose(1, 2)
        v = self.v_proj(tokens).view(b, -1, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, d)
        out = out.transpose(1, 2).reshape(b, c)
        return self.c_proj(out)


class ClipResNet3D(nn.Module):
    """3D version of CLIP's ModifiedResNet (MEDIMP's image encoder).

    Parameters
    ----------
    layers:
        Bottleneck blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.
    output_dim:
        Size of the pooled embedding (attention-pool output projection).
    in_channels:
        Input channels: 1 for one DCE phase, more for several phases as channels.
    width:
        Base width (64 for the paper); the final stage has ``width * 32`` channels.
    input_size:
        Configured ``(z, y, x)`` input size; sets the positional embedding grid.
    heads:
        Attention-pool heads; default ``width * 32 // 64`` as in CLIP.
    """

    gradcam_layer = "layer4"

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        output_dim: int = 512,
        in_channels: int = 1,
        width: int = 64,
        input_size: int | Sequence[int] = PAPER_INPUT_SIZE,
        heads: int | None = None,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 stages, got {tuple(layers)}")
        if width % 2:
            raise ValueError("width must be even (the stem starts with width/2 channels)")
        self.layers = tuple(int(n) for n in layers)
        self.width = width
        self.in_channels = in_channels
        self.input_size = _triple(input_size)
        self.output_dim = output_dim

        half = width // 2
        self.conv1 = nn.Conv3d(in_channels, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(half)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(half)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv3d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm3d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = AntiAliasPool3d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, self.layers[0])
        self.layer2 = self._make_layer(width * 2, self.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, self.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, self.layers[3], stride=2)

        self.feature_dim = width * 32
        self.heads = heads if heads is not None else max(1, self.feature_dim // 64)
        self.attnpool = AttentionPool3d(
            feature_grid(self.input_size), self.feature_dim, self.heads, output_dim
        )
        for m in self.modules():
            if isinstance(m, Bottleneck3D):
                nn.init.zeros_(m.bn3.weight)  # each residual branch starts as identity (as CLIP)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        mods = [Bottleneck3D(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck3D.expansion
        mods += [Bottleneck3D(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Feature grid for the configured input size."""
        return self.attnpool.grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, ``(B, width*32, *grid)``."""
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, z, y, x) -> (B, output_dim)``."""
        return self.attnpool(self.forward_features(x))


class MonaiResNetEncoder(nn.Module):
    """A MONAI 3D ResNet (basic blocks) with its global-pooled features projected linearly to ``output_dim``."""

    _DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
    gradcam_layer = "backbone.layer4"

    def __init__(
        self,
        depth: int = 10,
        output_dim: int = 512,
        in_channels: int = 1,
        widen_factor: float = 1.0,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 2,
        no_max_pool: bool = False,
        input_size: int | Sequence[int] | None = None,
    ):
        super().__init__()
        from monai.networks.nets.resnet import ResNet

        if depth not in self._DEPTHS:
            raise ValueError(f"depth must be one of {sorted(self._DEPTHS)}, got {depth}")
        self.depth = depth
        self.in_channels = in_channels
        self.input_size = None if input_size is None else _triple(input_size)  # any size works
        self.output_dim = output_dim
        self.backbone = ResNet(
            block="basic",
            layers=list(self._DEPTHS[depth]),
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            widen_factor=widen_factor,
            feed_forward=False,
        )
        self.feature_dim = int(512 * widen_factor)
        self.proj = nn.Linear(self.feature_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, z, y, x) -> (B, output_dim)``."""
        return self.proj(self.backbone(x))


def clip_resnet50_3d(
    in_channels: int = 1,
    embed_dim: int = 512,
    input_size: int | Sequence[int] = PAPER_INPUT_SIZE,
    width: int = 64,
    **kwargs: Any,
) -> ClipResNet3D:
    """MEDIMP's image encoder: 3D CLIP ResNet-50 (layers 3-4-6-3, width 64, input (z, y, x) 192x144x96)."""
    return ClipResNet3D((3, 4, 6, 3), embed_dim, in_channels, width, input_size, **kwargs)


def _clip_resnet(default_layers: tuple[int, ...], default_width: int) -> Callable[..., nn.Module]:
    def factory(
        in_channels: int = 1,
        output_dim: int = 512,
        input_size: int | Sequence[int] = PAPER_INPUT_SIZE,
        layers: Sequence[int] = default_layers,
        width: int = default_width,
        heads: int | None = None,
    ) -> nn.Module:
        return ClipResNet3D(layers, output_dim, in_channels, width, input_size, heads)

    return factory


def _monai_resnet(depth: int) -> Callable[..., nn.Module]:
    def factory(in_channels: int = 1, output_dim: int = 512, **kwargs: Any) -> nn.Module:
        return MonaiResNetEncoder(depth, output_dim, in_channels, **kwargs)

    return factory


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "clip_resnet50_3d": _clip_resnet((3, 4, 6, 3), 64),
    "clip_resnet_tiny": _clip_resnet((1, 1, 1, 1), 8),
    "monai_resnet10": _monai_resnet(10),
    "monai_resnet18": _monai_resnet(18),
    "monai_resnet34": _monai_resnet(34),
}


def available_image_encoders() -> list[str]:
    """Names accepted by :func:`build_image_encoder`."""
    return sorted(_REGISTRY)


def build_image_encoder(
    name: str,
    in_channels: int = 1,
    output_dim: int = 512,
    input_size: int | Sequence[int] = PAPER_INPUT_SIZE,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered 3D image encoder.

    ``kwargs`` go to the encoder (e.g. ``width``/``layers``/``heads`` for CLIP ResNets,
    ``widen_factor``/``conv1_t_stride`` for MONAI ResNets). The result has ``output_dim`` and
    ``gradcam_layer`` attributes.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown image encoder {name!r}; available: {available_image_encoders()}") from None
    return factory(in_channels=in_channels, output_dim=output_dim, input_size=input_size, **kwargs)
