"""A dependency-free scatter-plot PNG writer, so `nnscore demo` draws its figure on a fresh
install (matplotlib is an optional extra). Panels of point sets, each in its own colour."""
from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["write_scatter_png", "COLOURS"]

COLOURS = {
    "grey": (190, 190, 190),
    "black": (0, 0, 0),
    "blue": (31, 119, 180),
    "orange": (255, 127, 14),
    "green": (44, 160, 44),
    "red": (214, 39, 40),
}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_scatter_png(path, panels, size: int = 360, margin: int = 12) -> None:
    """Write side-by-side square panels; each panel is a list of (points (n, 2), colour, radius).

    All panels share one data range, so they are comparable. Later point sets draw on top.
    """
    all_pts = np.concatenate([np.asarray(p, dtype=np.float64)[:, :2] for panel in panels for p, _, _ in panel])
    lo, hi = all_pts.min(0), all_pts.max(0)
    span = float(max(hi - lo)) or 1.0
    centre = (lo + hi) / 2
    width = size * len(panels) + margin * (len(panels) + 1)
    height = size + 2 * margin
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    for k, panel in enumerate(panels):
        x0 = margin + k * (size + margin)
        img[margin - 1, x0 - 1 : x0 + size + 1] = 0  # frame
        img[margin + size, x0 - 1 : x0 + size + 1] = 0
        img[margin - 1 : margin + size + 1, x0 - 1] = 0
        img[margin - 1 : margin + size + 1, x0 + size] = 0
        for pts, colour, radius in panel:
            p = (np.asarray(pts, dtype=np.float64)[:, :2] - centre) / (1.1 * span) + 0.5
            cols = np.clip((p[:, 0] * (size - 1)).round().astype(int), 0, size - 1) + x0
            rows = np.clip(((1 - p[:, 1]) * (size - 1)).round().astype(int), 0, size - 1) + margin
            rgb = np.array(COLOURS[colour], dtype=np.uint8)
            for dr in range(-radius, radius + 1):
                for dc in range(-radius, radius + 1):
                    if dr * dr + dc * dc <= radius * radius:
                        img[np.clip(rows + dr, 0, height - 1), np.clip(cols + dc, 0, width - 1)] = rgb
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(height))  # filter type 0 per row
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)
