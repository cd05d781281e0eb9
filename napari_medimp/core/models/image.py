"""3D image encoders: MEDIMP's CLIP-style ResNet-50 and compact MONAI ResNets for CPU use.

Every encoder maps ``(B, C, z, y, x)`` to ``(B, output_dim)`` and exposes

* ``output_dim``: size of its feature vector;
* ``gradcam_layer``: dotted name (for ``get_submodule``) of its last convolutional stage, the layer
  Grad-CAM should hook.

The CLIP-style network is a 3D transcription of OpenAI CLIP's ``ModifiedResNet`` as described in
MEDIMP (Milecki et al., MIDL 2023): a stem of three 3x3x3 convolutions and an average pool,
anti-aliased bottleneck stages (a stride is an ``AvgPool3d`` after the 3x3x3 convolution, never a
strided convolution) and attention pooling over the final grid with the mean token as query.
All average pools use ``ceil_mode``. MEDIMP's stem keeps full resolution along the first axis of its
96x144x192 input (first convolution stride (1, 2, 2)); that input is NIfTI (x, y, z) order, so here,
in (z, y, x) order, the paper encoder's first convolution has stride (2, 2, 1). Its pools drop a partial
last window (floor), as MEDIMP's, so its feature grid for 192x144x96 is (192/32, 144/32, 96/16) rounded
down = 6x4x6, and with MEDIMP's 1024-d output it costs 403 GFLOP and has 61.2 M parameters. The compact
encoders stride every axis (``stem_stride=2``) and keep partial windows (``ceil_mode``), so that every
voxel of a small input reaches the grid.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..paper import PAPER_EMBED_DIM, PAPER_INPUT_SIZE

__all__ = [
    "AntiAliasPool3d",
    "PAPER_EMBED_DIM",
    "PAPER_STEM_STRIDE",
    "AttentionPool3d",
    "Bottleneck3D",
    "ClipResNet3D",
    "MonaiResNetEncoder",
    "available_image_encoders",
    "build_image_encoder",
    "clip_resnet50_3d",
    "count_flops",
    "feature_grid",
]



def _triple(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (size, size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise ValueError(f"expected a 3D size (z, y, x), got {size}")
    return size  # type: ignore[return-value]


#: first-convolution stride of MEDIMP's encoder in (z, y, x) order: full resolution along x
PAPER_STEM_STRIDE = (2, 2, 1)


def feature_grid(input_size: int | Sequence[int], stem_stride: int | Sequence[int] = 2,
                 ceil_mode: bool = True) -> tuple[int, int, int]:
    """Feature grid of :class:`ClipResNet3D` for an input of ``input_size``.

    The stem convolution maps ``n`` to ``ceil(n / s)`` (``s`` its stride on that axis, 1 or 2); then
    each of the four halvings (stem pool, three strided stages) maps ``n`` to ``ceil(n / 2)``, or with
    ``ceil_mode=False`` to ``floor(n / 2)`` (an axis of 1 stays 1).
    """
    grid = []
    for n, s in zip(_triple(input_size), _triple(stem_stride), strict=True):
        n = -(-n // s)
        for _ in range(4):
            n = (n + 1) // 2 if ceil_mode else max(1, n // 2)
        grid.append(n)
    return tuple(grid)  # type: ignore[return-value]


class AntiAliasPool3d(nn.AvgPool3d):
    """``AvgPool3d(k, ceil_mode)`` that also accepts axes shorter than the kernel.

    With ``ceil_mode`` a partial window averages only its valid voxels; without it the partial last
    window is dropped (MEDIMP's pools). Either way an axis shorter than the kernel becomes one output
    equal to its mean; plain ``AvgPool3d`` refuses that case, which matters for the small test inputs
    and for thin volumes.
    """

    def __init__(self, kernel_size: int, ceil_mode: bool = True):
        super().__init__(kernel_size, ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _triple(self.kernel_size)
        n = x.shape[-3:]
        if all(ni >= ki for ni, ki in zip(n, k, strict=True)):
            return super().forward(x)
        kernel = tuple(min(ki, ni) for ki, ni in zip(k, n, strict=True))
        stride = tuple(ki if ni >= ki else ni for ki, ni in zip(k, n, strict=True))
        return F.avg_pool3d(x, kernel, stride, ceil_mode=self.ceil_mode)


class Bottleneck3D(nn.Module):
    """Anti-aliased 3D bottleneck: 1x1x1 -> 3x3x3 -> [AvgPool3d(stride)] -> 1x1x1, expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, ceil_mode: bool = True):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = AntiAliasPool3d(stride, ceil_mode) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", AntiAliasPool3d(stride, ceil_mode) if stride > 1 else nn.Identity()),
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
    stem_stride:
        Stride of the first convolution per axis (z, y, x): 2 everywhere for the compact encoders,
        :data:`PAPER_STEM_STRIDE` for MEDIMP's.
    ceil_mode:
        Pools keep a partial last window (True, the compact encoders) or drop it (False, MEDIMP's).
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
        stem_stride: int | Sequence[int] = 2,
        ceil_mode: bool = True,
    ):
        super().__init__()
        stem_stride = _triple(stem_stride)
        if any(st not in (1, 2) for st in stem_stride):
            raise ValueError(f"stem_stride must be 1 or 2 per axis, got {stem_stride}")
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 stages, got {tuple(layers)}")
        if width % 2:
            raise ValueError("width must be even (the stem starts with width/2 channels)")
        self.layers = tuple(int(n) for n in layers)
        self.width = width
        self.in_channels = in_channels
        self.input_size = _triple(input_size)
        self.output_dim = output_dim
        self.stem_stride = stem_stride
        self.ceil_mode = bool(ceil_mode)

        half = width // 2
        self.conv1 = nn.Conv3d(in_channels, half, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(half)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(half)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv3d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm3d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = AntiAliasPool3d(2, self.ceil_mode)

        self._inplanes = width
        self.layer1 = self._make_layer(width, self.layers[0])
        self.layer2 = self._make_layer(width * 2, self.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, self.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, self.layers[3], stride=2)

        self.feature_dim = width * 32
        self.heads = heads if heads is not None else max(1, self.feature_dim // 64)
        self.attnpool = AttentionPool3d(
            feature_grid(self.input_size, stem_stride, self.ceil_mode), self.feature_dim, self.heads, output_dim
        )
        for m in self.modules():
            if isinstance(m, Bottleneck3D):
                nn.init.zeros_(m.bn3.weight)  # each residual branch starts as identity (as CLIP)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        mods = [Bottleneck3D(self._inplanes, planes, stride, self.ceil_mode)]
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
    embed_dim: int = PAPER_EMBED_DIM,
    input_size: int | Sequence[int] = PAPER_INPUT_SIZE,
    width: int = 64,
    **kwargs: Any,
) -> ClipResNet3D:
    """MEDIMP's image encoder: 3D CLIP ResNet-50 (layers 3-4-6-3, width 64, input (z, y, x) 192x144x96,
    first convolution stride :data:`PAPER_STEM_STRIDE`, floor pools, 1024-d output)."""
    kwargs.setdefault("stem_stride", PAPER_STEM_STRIDE)
    kwargs.setdefault("ceil_mode", False)
    return ClipResNet3D((3, 4, 6, 3), embed_dim, in_channels, width, input_size, **kwargs)


def _clip_resnet(default_layers: tuple[int, ...], default_width: int,
                 default_stem_stride: int | tuple[int, int, int] = 2,
                 default_ceil_mode: bool = True) -> Callable[..., nn.Module]:
    def factory(
        in_channels: int = 1,
        output_dim: int = 512,
        input_size: int | Sequence[int] = PAPER_INPUT_SIZE,
        layers: Sequence[int] = default_layers,
        width: int = default_width,
        heads: int | None = None,
        stem_stride: int | Sequence[int] = default_stem_stride,
        ceil_mode: bool = default_ceil_mode,
    ) -> nn.Module:
        return ClipResNet3D(layers, output_dim, in_channels, width, input_size, heads, stem_stride, ceil_mode)

    return factory


def _monai_resnet(depth: int) -> Callable[..., nn.Module]:
    def factory(in_channels: int = 1, output_dim: int = 512, **kwargs: Any) -> nn.Module:
        return MonaiResNetEncoder(depth, output_dim, in_channels, **kwargs)

    return factory


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "clip_resnet50_3d": _clip_resnet((3, 4, 6, 3), 64, PAPER_STEM_STRIDE, False),
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


def count_flops(module: nn.Module, input_shape: Sequence[int]) -> float:
    """Model FLOPs (2 x multiply-adds) of one forward pass on an input of ``input_shape`` (B, C, z, y, x):
    every ``Conv3d`` and ``Linear`` plus the attention pool's two matrix products.

    The pass runs on a copy of ``module`` on the meta device, so no memory is allocated and nothing is
    computed: counting the paper encoder at its full input takes milliseconds.
    """
    import copy

    meta = copy.deepcopy(module).to("meta")
    total = 0.0

    def conv(m, _inputs, out):
        nonlocal total
        total += 2.0 * math.prod(m.kernel_size) * m.in_channels / m.groups * out.numel()

    def linear(m, inputs, _out):
        nonlocal total
        total += 2.0 * inputs[0].numel() / inputs[0].shape[-1] * m.in_features * m.out_features

    def attention(_m, inputs, _out):
        nonlocal total
        b, c = inputs[0].shape[:2]
        tokens = math.prod(inputs[0].shape[2:]) + 1
        total += 2.0 * 2.0 * b * tokens * c  # one query: q.k over the tokens, then the weighted values

    hooks = []
    for m in meta.modules():
        if isinstance(m, nn.Conv3d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, AttentionPool3d):
            hooks.append(m.register_forward_hook(attention))
    try:
        with torch.no_grad():
            meta(torch.empty(*input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total
