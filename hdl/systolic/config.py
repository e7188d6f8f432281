# SPDX-License-Identifier: BSD-2-Clause
"""Configurations of the systolic array and of the unified compute unit.

Two frozen, validated dataclasses:

:class:`ArrayConfig`
    The PE array: ``rows × cols`` processing elements, the operand and accumulator widths (taken
    from :class:`golden.numerics.Numerics`), and the mesh's register boundaries.
:class:`ComputeConfig`
    The compute unit around one array: the largest ``M × K × N`` product it accepts, the size of
    its activation buffer and whether it holds the GELU unit.

Every width derives from the numerics; invalid parameters raise :exc:`TypeError` (wrong type) or
:exc:`ValueError` (out of range) at construction, never at elaboration or in simulation.

DSP48E2 mapping
---------------
The DSP48E2 multiplier is 27 × 18 bits (two's complement) and its accumulator 48 bits (UG579).
One MAC of the array is one DSP48E2: the X operand on the 27-bit A port, the weight on the
18-bit B port, the partial sum on the 48-bit P cascade. Two MACs per DSP (the INT8 packing of
AMD WP486, two products sharing the B operand) needs operands of at most 8 bits; every matrix
operand of :class:`~golden.numerics.Numerics` is 16 bits wide (SQ(2,14) weights, SQ(7,9)
activations, SQ(1,15) probabilities …), so **one MAC per DSP48E2** — the packing does not
apply to these formats.
"""

import math
from dataclasses import dataclass

from golden.numerics import DEFAULT_NUMERICS, Numerics

from .._checks import check_int

__all__ = ["DSP_A_BITS", "DSP_B_BITS", "DSP_P_BITS", "ArrayConfig", "ComputeConfig",
           "SMALL_COMPUTE", "M3VIT_TINY_COMPUTE"]

#: DSP48E2 A-port width (the 27-bit multiplier input).
DSP_A_BITS = 27
#: DSP48E2 B-port width (the 18-bit multiplier input).
DSP_B_BITS = 18
#: DSP48E2 accumulator (P) width.
DSP_P_BITS = 48

# Formats that appear as the X (streaming) operand and as the W (stationary) operand of the
# model's products (golden/twin.py): patch embedding pixel·weight; qkv, fc1, experts, router
# ln_out·weight; proj act·weight; fc2 and expert fc2 hidden·weight; Q·Kᵀ qkv·qkv; A·V prob·qkv.
_X_FORMATS = ("pixel", "ln_out", "act", "hidden", "qkv", "prob")
_W_FORMATS = ("weight", "qkv")
# Formats the unit writes (and reads back for accumulation).
_OUT_FORMATS = ("act", "qkv", "score", "hidden", "logit")


@dataclass(frozen=True)
class ArrayConfig:
    """A weight-stationary systolic array of ``rows × cols`` DSP48E2 MACs.

    PE ``(r, c)`` holds the weight ``W[n0 + c, k0 + r]`` of the current tile: rows index the
    reduction dimension K, columns the output dimension N. X rows stream in from the west, one
    token per cycle; partial sums flow south; one output row of ``cols`` sums leaves the bottom
    per cycle.

    Parameters
    ----------
    rows, cols : int
        PE rows (K-tile) and columns (N-tile).
    numerics : Numerics
        Formats; the operand and accumulator widths default to the widest X operand, the widest
        W operand and ``numerics.acc_bits``.
    grid_rows, grid_cols : int or None
        Size of one :class:`~hdl.systolic.grid.PEGrid` (PEs wired neighbour to neighbour). The
        :class:`~hdl.systolic.mesh.Mesh` tiles the array with grids and puts ``mesh_regs``
        extra pipeline registers on every path that crosses a grid boundary (long routes between
        DSP columns). ``None`` means the whole array is one grid.
    mesh_regs : int
        Extra registers per grid boundary (0: the boundary is plain wiring).
    a_bits, w_bits, acc_bits : int or None
        Override the X operand, W operand and accumulator widths. ``a_bits`` ≤ 27 and
        ``w_bits`` ≤ 18 (the DSP48E2 multiplier), ``acc_bits`` ≤ 48 (its accumulator), and none
        narrower than the numerics' formats need.
    load_words : int
        Weight words per load word on the array's ``w`` stream: 1, or 2 (a *pair*: two
        adjacent PE rows or columns per cycle, so a tile loads in half the cycles; ``rows`` and
        ``cols`` must be even). With 2 every load packet carries two weights and a ``pair``
        flag: each of a PE's two transit registers (south, east) is 17 bits wider.
    """

    rows: int
    cols: int
    numerics: Numerics = DEFAULT_NUMERICS
    grid_rows: int = None
    grid_cols: int = None
    mesh_regs: int = 0
    a_bits: int = None
    w_bits: int = None
    acc_bits: int = None
    load_words: int = 1

    def __post_init__(self):
        check_int("rows", self.rows)
        check_int("cols", self.cols)
        check_int("load_words", self.load_words, 1, 2)
        if self.load_words == 2 and (self.rows % 2 or self.cols % 2):
            raise ValueError(f"load_words = 2 loads PE rows and columns in pairs: rows and cols "
                             f"must be even, not {self.rows}×{self.cols}")
        if not isinstance(self.numerics, Numerics):
            raise TypeError(f"numerics must be a golden.numerics.Numerics, not "
                            f"{self.numerics!r}")
        nx = self.numerics
        for name, default in (("grid_rows", self.rows), ("grid_cols", self.cols)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            check_int(name, getattr(self, name))
        if self.grid_rows > self.rows or self.grid_cols > self.cols:
            raise ValueError(f"grid {self.grid_rows}×{self.grid_cols} is larger than the "
                             f"array {self.rows}×{self.cols}")
        check_int("mesh_regs", self.mesh_regs, 0)
        need_a = max(getattr(nx, f).width for f in _X_FORMATS)
        need_w = max(getattr(nx, f).width for f in _W_FORMATS)
        need_acc = nx.acc_bits
        for name, default in (("a_bits", need_a), ("w_bits", need_w), ("acc_bits", need_acc)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            check_int(name, getattr(self, name))
        if self.a_bits > DSP_A_BITS:
            raise ValueError(f"a_bits ({self.a_bits}) is wider than a DSP48E2's {DSP_A_BITS}-bit "
                             f"A port: one MAC must map onto one DSP48E2 (27×18)")
        if self.w_bits > DSP_B_BITS:
            raise ValueError(f"w_bits ({self.w_bits}) is wider than a DSP48E2's {DSP_B_BITS}-bit "
                             f"B port: one MAC must map onto one DSP48E2 (27×18)")
        if self.acc_bits > DSP_P_BITS:
            raise ValueError(f"acc_bits ({self.acc_bits}) is wider than a DSP48E2's "
                             f"{DSP_P_BITS}-bit accumulator")
        if self.a_bits < need_a:
            raise ValueError(f"a_bits ({self.a_bits}) is narrower than the widest X operand "
                             f"format of the numerics ({need_a} bits)")
        if self.w_bits < need_w:
            raise ValueError(f"w_bits ({self.w_bits}) is narrower than the widest W operand "
                             f"format of the numerics ({need_w} bits)")
        if self.acc_bits < need_acc:
            raise ValueError(f"acc_bits ({self.acc_bits}) is narrower than numerics.acc_bits "
                             f"({need_acc})")

    # -- derived ----------------------------------------------------------------------------

    @property
    def n_pes(self):
        """Number of processing elements (= DSP48E2 slices)."""
        return self.rows * self.cols

    @property
    def w_lanes(self):
        """Lanes of a weight word: ``rows`` for a column load, ``cols`` for a row load."""
        return max(self.rows, self.cols)

    @property
    def elem_bits(self):
        """Width of one element of the activation buffer: the widest operand or output."""
        nx = self.numerics
        return max(self.a_bits, self.w_bits, *(getattr(nx, f).width for f in _OUT_FORMATS))

    @property
    def buffer_lanes(self):
        """Elements per activation-buffer word: ``lcm(rows, cols)``.

        An X read takes ``rows`` consecutive elements of a row (one K-slice), an output write
        puts ``cols`` (one N-slice); both are aligned groups of a word.
        """
        return self.rows * self.cols // math.gcd(self.rows, self.cols)

    @property
    def row_delays(self):
        """Cycles by which row ``r`` lags row 0 (``d_r``): one per row, plus ``mesh_regs`` per
        grid boundary crossed going south."""
        return tuple(r + self.mesh_regs * (r // self.grid_rows) for r in range(self.rows))

    @property
    def col_delays(self):
        """Cycles by which column ``c`` lags column 0 (``h_c``): one per column, plus
        ``mesh_regs`` per grid boundary crossed going east."""
        return tuple(c + self.mesh_regs * (c // self.grid_cols) for c in range(self.cols))


#: Default GELU presence: the compute unit instantiates :class:`hdl.nonlin.gelu.Gelu`.
_GELU_DEFAULT = True


@dataclass(frozen=True)
class ComputeConfig:
    """The unified compute unit: one :class:`ArrayConfig` plus buffers and limits.

    Parameters
    ----------
    array : ArrayConfig
        The PE array.
    max_m, max_k, max_n : int
        Largest product ``(M × K) · (N × K)ᵀ`` a command may ask for. ``max_m`` sizes the
        accumulator and row-scale memories, ``max_n`` the bias memory. ``max_k`` ≤ 2**16 (the
        48-bit accumulator is exact up to 2**16 products of 16-bit operands).
    abuf_depth : int
        Words of the activation buffer (each ``array.buffer_lanes`` elements of
        ``array.elem_bits``).
    abuf_bank_depth : int
        Words per bank of the activation buffer (the buffer is built from
        ``ceil(abuf_depth / abuf_bank_depth)`` memories; 4096 words of 256 bits is four
        UltraRAMs wide and one deep per read port).
    gelu : bool
        Instantiate the GELU unit (:class:`hdl.nonlin.gelu.Gelu`, format ``numerics.hidden``)
        in the epilogue. Without it, commands that ask for GELU are refused.
    w_queue_tiles : int
        Weight tiles the weight-stream queue holds (2: ping-pong, the next tile arrives while the
        PEs' shadow registers take the current one).
    """

    array: ArrayConfig
    max_m: int = 256
    max_k: int = 768
    max_n: int = 768
    abuf_depth: int = 16384
    abuf_bank_depth: int = 4096
    gelu: bool = _GELU_DEFAULT
    w_queue_tiles: int = 2

    #: Longest reduction the 48-bit accumulator holds exactly (golden.numerics).
    MAX_K_LIMIT = 1 << 16

    def __post_init__(self):
        if not isinstance(self.array, ArrayConfig):
            raise TypeError(f"array must be an ArrayConfig, not {self.array!r}")
        for name in ("max_m", "max_k", "max_n", "abuf_depth", "abuf_bank_depth",
                     "w_queue_tiles"):
            check_int(name, getattr(self, name))
        if self.max_k > self.MAX_K_LIMIT:
            raise ValueError(f"max_k ({self.max_k}) is above {self.MAX_K_LIMIT}: the 48-bit "
                             f"accumulator is exact only for up to 2**16 products")
        if not isinstance(self.gelu, bool):
            raise TypeError(f"gelu must be a bool, not {self.gelu!r}")

    @property
    def numerics(self):
        """The numerics of the array."""
        return self.array.numerics

    @property
    def max_kt(self):
        """Most K-tiles of a product: ``ceil(max_k / rows)``."""
        return -(-self.max_k // self.array.rows)

    @property
    def max_nt(self):
        """Most N-tiles of a product: ``ceil(max_n / cols)``; the depth of the bias memory."""
        return -(-self.max_n // self.array.cols)

    @property
    def dim_bits(self):
        """Width of the M, K and N fields of a command (one more bit than the largest maximum,
        so that a too-large size can be expressed and refused)."""
        return max(self.max_m, self.max_k, self.max_n).bit_length() + 1

    @property
    def addr_bits(self):
        """Width of an activation-buffer address."""
        return max(self.abuf_depth - 1, 1).bit_length()

    def check_shape(self, m, k, n):
        """Raise ``ValueError`` unless ``1 ≤ M ≤ max_m``, ``1 ≤ K ≤ max_k``, ``1 ≤ N ≤ max_n``."""
        for name, v, hi in (("M", m, self.max_m), ("K", k, self.max_k), ("N", n, self.max_n)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, not {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
            if v > hi:
                raise ValueError(f"{name} = {v} is above the configured maximum max_"
                                 f"{name.lower()} = {hi}")


#: A small configuration for pure-Python simulation tests.
SMALL_COMPUTE = ComputeConfig(ArrayConfig(2, 2), max_m=8, max_k=8, max_n=8, abuf_depth=128,
                              gelu=False)

#: The m3vit-tiny instance: 16 × 16 PEs (256 DSP48E2), every product of the model (M ≤ 256
#: tokens, K and N ≤ 768) and an activation buffer of 16384 words × 16 elements (4 Mbit: the
#: residual stream, a LayerNorm output and the 129 × 768 hidden matrix at once).
M3VIT_TINY_COMPUTE = ComputeConfig(ArrayConfig(16, 16), max_m=256, max_k=768, max_n=768,
                                   abuf_depth=16384, gelu=True)
