"""Figures of MEDIMP's published model (Milecki et al., MIDL 2023) used on both sides of torch."""

from __future__ import annotations

#: MEDIMP's input size ``[96, 144, 192]`` is the spatial order of its torchio tensors, i.e. NIfTI
#: ``(x, y, z)``; in our ``(z, y, x)`` convention that is ``(192, 144, 96)`` (assuming RAS-like files,
#: which the paper does not state).
PAPER_INPUT_SIZE = (192, 144, 96)
#: MEDIMP's embedding size (its CLIP RN50 configuration)
PAPER_EMBED_DIM = 1024
