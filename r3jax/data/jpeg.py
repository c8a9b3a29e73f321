"""JPEG (or any PIL-readable) files to fixed-size uint8 arrays, without TF.

Resize rule: the largest centred square of the image is resized to
`size` x `size` (bicubic, antialiased), i.e. shorter side to `size` then a
centre crop. `fit="squash"` instead resizes the whole image to the square,
changing its aspect ratio. Grey, CMYK and palette images become RGB.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FITS = ("crop", "squash")


def load_image(path: str, size: int, fit: str = "crop") -> np.ndarray:
  """The image at `path` as uint8 (size, size, 3); see the module doc."""
  if fit not in FITS:
    raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
  with Image.open(path) as img:
    # JPEG DCT scaling: decode at the smallest scale still >= size x size.
    img.draft("RGB", (size, size))
    img = img.convert("RGB")
    w, h = img.size
    box = (0, 0, w, h)
    if fit == "crop":
      side = min(w, h)
      left, top = (w - side) // 2, (h - side) // 2
      box = (left, top, left + side, top + side)
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(img, dtype=np.uint8)
