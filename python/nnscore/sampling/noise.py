"""Seeded per-sample noise that does not depend on how samples are batched.

Every random number a sampler draws is a pure function of

    (key, global sample index, step index, stream tag, position within the draw),

computed by the counter-based generator Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel
random numbers: as easy as 1, 2, 3", SC 2011; the generator of cuRAND, JAX and Random123).  The
key (64 bits) comes from the user's ``rng``; the other four numbers form the 128-bit counter.
Sample ``k`` therefore sees the same noise at step ``j`` whether it is drawn alone, in a batch
of ten or in a batch of a million, and whatever tiling the sampler uses internally (e.g. the
chunks of training points of the exact bridge's Gumbel-max draw).

Counter layout (four 32-bit words):

* ``c0``: block index within the draw (one block gives two float64 uniforms, or two normals);
* ``c1``: low 32 bits of the global sample index;
* ``c2``: step index (low 32 bits);
* ``c3``: ``tag << 16 | sample index >> 32`` (sample indices below 2**48, tags below 2**16).

Uniforms carry 52 random bits, ``u = (k + 1/2) 2**-52`` with ``0 <= k < 2**52`` (exactly
representable, strictly inside (0, 1)); normals use the Box-Muller transform of two uniforms;
Gumbel variables are ``-log(-log u)``, bounded by :data:`GUMBEL_MIN` and :data:`GUMBEL_MAX`.
Everything is vectorised NumPy over cache-sized tiles (about 60 integer array operations per
block of two uniforms; ~25 ns per block on one core).
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "SampleNoise",
    "philox4x32_10",
    "TAG_INIT",
    "TAG_STEP",
    "TAG_CATEGORICAL",
    "TAG_START",
    "TAG_CORRECTOR",
    "GUMBEL_MIN",
    "GUMBEL_MAX",
]

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_TWO_PI = 2.0 * np.pi
_INV_2_52 = 2.0**-52

#: Stream tags: disjoint noise for the initial state, the per-step Gaussian, categorical draws,
#: the data start of ``start="data"`` and the Langevin corrector steps (``TAG_CORRECTOR + k``).
TAG_INIT = 0
TAG_STEP = 1
TAG_CATEGORICAL = 2
TAG_START = 3
TAG_CORRECTOR = 16
_MAX_TAG = 1 << 16
_MAX_ROWS = 1 << 48
_CHUNK = 8192  # Philox blocks per vectorised pass (cache-sized: ~4x faster than one big pass)


def philox4x32_10(counter, key) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Philox4x32-10 bijection of Random123, vectorised over broadcastable counters.

    Parameters
    ----------
    counter : 4 array_like of integers in [0, 2**32)
        The counter words ``(c0, c1, c2, c3)``; they broadcast against each other.
    key : 2 integers in [0, 2**32)

    Returns
    -------
    4 uint64 arrays (values below 2**32) of the broadcast shape
        The output words; ``counter = (0, 0, 0, 0)``, ``key = (0, 0)`` gives
        ``(0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)`` (Random123's known answer).
    """
    words = [np.asarray(c, dtype=np.uint64) for c in counter]
    shape = np.broadcast_shapes(*(w.shape for w in words))
    a, b, c, d = (np.array(np.broadcast_to(w, shape), dtype=np.uint64) for w in words)
    p0 = np.empty(shape, dtype=np.uint64)
    p1 = np.empty(shape, dtype=np.uint64)
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1, mask, shift = np.uint64(_M0), np.uint64(_M1), np.uint64(_MASK32), np.uint64(32)
    for rnd in range(10):
        if rnd:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        np.multiply(a, m0, out=p0)  # both factors < 2**32: the 64-bit product is exact
        np.multiply(c, m1, out=p1)
        # (a, b, c, d) <- (hi(p1) ^ b ^ k0, lo(p1), hi(p0) ^ d ^ k1, lo(p0))
        np.right_shift(p1, shift, out=a)
        a ^= b
        a ^= np.uint64(k0)
        np.bitwise_and(p1, mask, out=b)
        np.right_shift(p0, shift, out=c)
        c ^= d
        c ^= np.uint64(k1)
        np.bitwise_and(p0, mask, out=d)
    return a, b, c, d


class SampleNoise:
    """Counter-based noise source of one sampling run (see the module docstring).

    Parameters
    ----------
    key : pair of int
        The 64-bit key as two 32-bit words.
    offset : int, default 0
        Global index of row 0: a batch covering samples ``[start, stop)`` uses
        ``noise.shifted(start)``.

    Use :meth:`from_rng` to build one from a seed; samplers accept an instance as ``rng``.
    """

    __slots__ = ("key", "offset")

    def __init__(self, key, offset: int = 0):
        k0, k1 = (int(k) for k in key)
        if not (0 <= k0 <= _MASK32 and 0 <= k1 <= _MASK32):
            raise ValueError(f"key: both words must lie in [0, 2**32), got {key!r}")
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"offset: must be an integer >= 0, got {offset!r}")
        self.key = (k0, k1)
        self.offset = int(offset)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_rng(cls, rng) -> "SampleNoise":
        """A noise source from ``rng``.

        Parameters
        ----------
        rng : None, int, numpy.random.SeedSequence, numpy.random.Generator or SampleNoise
            ``None`` draws fresh OS entropy; an int (>= 0) or a SeedSequence is a reproducible
            seed; a Generator gives its next 64 random bits (it advances); a SampleNoise is
            returned unchanged.  Global NumPy state is never used.

        Raises
        ------
        TypeError
            For any other type (the message names ``rng``).
        """
        if isinstance(rng, SampleNoise):
            return rng
        if rng is None:
            words = np.random.SeedSequence().generate_state(2, dtype=np.uint32)
        elif isinstance(rng, np.random.Generator):
            words = rng.integers(0, 2**32, size=2, dtype=np.uint64)
        elif isinstance(rng, np.random.SeedSequence):
            words = rng.generate_state(2, dtype=np.uint32)
        elif isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
            if int(rng) < 0:
                raise ValueError(f"rng: an integer seed must be >= 0, got {int(rng)}")
            words = np.random.SeedSequence(int(rng)).generate_state(2, dtype=np.uint32)
        else:
            raise TypeError(
                "rng: expected None, an int seed, a numpy.random.Generator, a SeedSequence or a "
                f"SampleNoise, got {type(rng).__name__}"
            )
        return cls((int(words[0]), int(words[1])))

    def shifted(self, offset: int) -> "SampleNoise":
        """The same stream with rows starting at global sample index ``self.offset + offset``."""
        return SampleNoise(self.key, self.offset + int(offset))

    def __repr__(self) -> str:
        return f"SampleNoise(key=({self.key[0]:#010x}, {self.key[1]:#010x}), offset={self.offset})"

    # -- raw blocks --------------------------------------------------------------------------

    def _check_range(self, tag: int, rows_end: int) -> None:
        if not 0 <= tag < _MAX_TAG:
            raise ValueError(f"tag: must lie in [0, {_MAX_TAG}), got {tag}")
        if self.offset + rows_end > _MAX_ROWS:
            raise ValueError(f"sample index out of range: at most 2**48 samples, got {self.offset + rows_end}")

    def _block_words(self, rows, blocks, step: int, tag: int):
        """52-bit integers (two per block) for local ``rows`` and ``blocks`` (broadcastable uint64)."""
        g = rows + np.uint64(self.offset)
        shift = np.uint64(32)
        c3 = (g >> shift) | np.uint64(tag << 16)
        w0, w1, w2, w3 = philox4x32_10((blocks, g & np.uint64(_MASK32), np.uint64(int(step) & _MASK32), c3), self.key)
        drop = np.uint64(12)
        w0 <<= shift
        w0 |= w1
        w0 >>= drop
        w2 <<= shift
        w2 |= w3
        w2 >>= drop
        return w0, w2

    def _grid(self, n_rows: int, block_start: int, n_blocks: int, step: int, tag: int, write) -> None:
        """Generate the (n_rows x n_blocks) block grid in cache-sized tiles.

        ``write(r0, r1, b0, b1, wa, wb)`` receives the two (r1 - r0, b1 - b0) arrays of 52-bit
        integers of each tile (block indices relative to ``block_start``).
        """
        self._check_range(tag, n_rows)
        if n_rows == 0 or n_blocks == 0:
            return
        cols = min(n_blocks, _CHUNK)
        rows_per = max(1, _CHUNK // cols)
        for r0 in range(0, n_rows, rows_per):
            r1 = min(n_rows, r0 + rows_per)
            rows = np.arange(r0, r1, dtype=np.uint64)[:, None]
            for b0 in range(0, n_blocks, cols):
                b1 = min(n_blocks, b0 + cols)
                blocks = np.arange(block_start + b0, block_start + b1, dtype=np.uint64)[None, :]
                wa, wb = self._block_words(rows, blocks, step, tag)
                write(r0, r1, b0, b1, wa, wb)

    @staticmethod
    def _to_unit(words: np.ndarray) -> np.ndarray:
        """52-bit integers k -> (k + 1/2) 2**-52, exactly, in [2**-53, 1 - 2**-53], float64."""
        u = words.astype(np.float64)
        u += 0.5
        u *= _INV_2_52
        return u

    # -- distributions -----------------------------------------------------------------------

    def uniform(self, n_rows: int, col_start: int, col_stop: int, step: int, tag: int) -> np.ndarray:
        """Uniforms in (0, 1) for rows ``0..n_rows-1`` and columns ``[col_start, col_stop)``.

        Column ``c`` of a row (block ``c // 2``, half ``c % 2``) is the same number whatever range
        it is requested in, and the same as :meth:`uniform_at` gives for it.

        Returns
        -------
        (n_rows, col_stop - col_start) float64
        """
        b0 = col_start // 2
        b1 = (col_stop + 1) // 2
        words = np.empty((n_rows, 2 * (b1 - b0)), dtype=np.uint64)

        def write(r0, r1, c0, c1, wa, wb):
            words[r0:r1, 2 * c0 : 2 * c1 : 2] = wa
            words[r0:r1, 2 * c0 + 1 : 2 * c1 : 2] = wb

        self._grid(n_rows, b0, b1 - b0, step, tag, write)
        return self._to_unit(words[:, col_start - 2 * b0 : col_stop - 2 * b0])

    def uniform_at(self, rows, cols, step: int, tag: int) -> np.ndarray:
        """Uniforms of scattered (row, column) pairs: ``uniform(...)[rows, cols]`` without the grid.

        Parameters
        ----------
        rows, cols : (K,) integer arrays
            Local row indices (>= 0) and absolute column indices (>= 0).
        """
        rows = np.asarray(rows, dtype=np.uint64).reshape(-1)
        cols = np.asarray(cols, dtype=np.uint64).reshape(-1)
        self._check_range(tag, int(rows.max()) + 1 if rows.size else 0)
        out = np.empty(rows.size, dtype=np.uint64)
        one = np.uint64(1)
        for k0 in range(0, rows.size, _CHUNK):
            r = rows[k0 : k0 + _CHUNK]
            c = cols[k0 : k0 + _CHUNK]
            wa, wb = self._block_words(r, c >> one, step, tag)
            out[k0 : k0 + r.size] = np.where((c & one) == 0, wa, wb)
        return self._to_unit(out)

    def normal(self, n_rows: int, n_cols: int, step: int, tag: int = TAG_STEP) -> np.ndarray:
        """Standard normal (n_rows, n_cols) float64 by Box-Muller; row ``r`` is sample ``offset + r``."""
        nb = (n_cols + 1) // 2
        out = np.empty((n_rows, 2 * nb), dtype=np.float64)

        def write(r0, r1, c0, c1, wa, wb):
            radius = self._to_unit(wa)
            np.log(radius, out=radius)
            radius *= -2.0
            np.sqrt(radius, out=radius)
            angle = self._to_unit(wb)
            angle *= _TWO_PI
            np.multiply(radius, np.cos(angle), out=out[r0:r1, 2 * c0 : 2 * c1 : 2])
            np.multiply(radius, np.sin(angle), out=out[r0:r1, 2 * c0 + 1 : 2 * c1 : 2])

        self._grid(n_rows, 0, nb, step, tag, write)
        return out[:, :n_cols]

    @staticmethod
    def _gumbel_of(u: np.ndarray) -> np.ndarray:
        np.log(u, out=u)
        np.negative(u, out=u)
        np.log(u, out=u)
        np.negative(u, out=u)
        return u

    def gumbel(self, n_rows: int, col_start: int, col_stop: int, step: int, tag: int = TAG_CATEGORICAL) -> np.ndarray:
        """Standard Gumbel variables ``-log(-log u)`` for columns ``[col_start, col_stop)``."""
        return self._gumbel_of(self.uniform(n_rows, col_start, col_stop, step, tag))

    def gumbel_at(self, rows, cols, step: int, tag: int = TAG_CATEGORICAL) -> np.ndarray:
        """Gumbel variables of scattered (row, column) pairs (the values :meth:`gumbel` gives)."""
        return self._gumbel_of(self.uniform_at(rows, cols, step, tag))


def _gumbel_bounds() -> tuple[float, float]:
    """Bounds of every Gumbel value this module can produce (u ranges over [2**-53, 1 - 2**-53])."""
    u = np.array([0.5 * _INV_2_52, ((1 << 52) - 0.5) * _INV_2_52])
    g = -np.log(-np.log(u))
    return float(g[0]) - 1e-6, float(g[1]) + 1e-6  # slack for last-bit differences of log paths


#: ``GUMBEL_MIN < g < GUMBEL_MAX`` for every Gumbel value drawn here (about -3.6 and 36.7):
#: the bounded support lets a Gumbel-max skip terms that cannot win, without changing the draw.
GUMBEL_MIN, GUMBEL_MAX = _gumbel_bounds()
