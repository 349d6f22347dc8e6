"""Test videos whose pixels encode their own frame index, and a reader for them.

The upright image shows the index as BITS binary cells (white = 1) left to
right along the top row of CELL x CELL blocks, and a red block in the
bottom-left corner, so a frame that comes out turned or flipped reads wrong.
"""

import numpy as np

BITS = 10
CELL = 8


def index_image(index: int, width: int, height: int) -> np.ndarray:
    """Upright RGB uint8 (H, W, 3) image encoding ``index``."""
    assert width >= BITS * CELL and height >= 3 * CELL
    image = np.full((height, width, 3), 60, np.uint8)
    for bit in range(BITS):
        if index >> bit & 1:
            image[:CELL, bit * CELL : (bit + 1) * CELL] = 255
    image[-CELL:, :CELL] = (255, 0, 0)
    return image


def read_index(image: np.ndarray) -> int:
    """Decode the index from an upright (H, W, 3) image; -1 if the orientation marker is missing."""
    corner = image[-CELL + 2 : -2, 2 : CELL - 2].reshape(-1, 3).mean(0)
    if not (corner[0] > 150 and corner[1] < 100):
        return -1
    cells = image[2 : CELL - 2, : BITS * CELL].reshape(CELL - 4, BITS, CELL, 3)[:, :, 2 : CELL - 2].mean(axis=(0, 2, 3))
    return int(sum(1 << b for b in range(BITS) if cells[b] > 157))


def stored_frame(upright: np.ndarray, rotation: int) -> np.ndarray:
    """The raw frame to encode so that a player applying ``rotation`` shows ``upright``."""
    return np.ascontiguousarray(np.rot90(upright, -(rotation // 90) % 4))
