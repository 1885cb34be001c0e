"""Proof of compute, version 2: the one definition the agent (to prove) and the server (to check)
share. Commit, then reveal.

1. The server sends a ``verify`` command without the seed. The agent asks for it
   (``POST /verification/start``); the server notes the time and answers with the seed, the
   matrix size ``n`` and the number of rounds ``T``.
2. The agent computes ``T`` matrix products ``C_t = A_t · B_tᵀ`` (``n × n``, inner size ``n``)
   and commits to all of them: a Merkle root over row blocks of the committed bits (below). It
   sends the root (``/verification/commit``); the server measures challenge sent → commitment
   received on its own clock, and only then picks the blocks it will check, at random.
3. The agent opens those blocks with their Merkle paths (``/verification/reveal``). The
   server checks each path against the root and, at random positions inside each block, the
   committed bit against its own O(n) recomputation of that entry (a row of ``A_t`` times a
   column of ``B_t``, both rebuilt from the seed).

The matrices. Entries are integers in ``[-8, 8]`` from a counter-based 32-bit hash (``mix32``,
operators only, so numpy, torch on a GPU and plain ints compute the same values): any row of
the base matrices ``A`` and ``Bᵀ`` is rebuilt in O(n) without the rest. Round ``t`` maps every
entry through a bijection of the 17 values, ``x → (α·(x+8) + β) mod 17 − 8``, with ``α, β``
per round and matrix from the seed: the rounds are different products, generated once. Every
product and partial sum is an integer of magnitude at most ``64·n < 2**24`` (``n ≤ 65536``), so
float32, TF32 and int8 tensor cores all compute ``C`` exactly, in any summation order.

The commitment. Per entry, one bit: ``(C[i, j] mod 17) & 1``. Knowing it needs the whole
integer sum (17 is not a power of two, so no narrower arithmetic gives it), while it costs the
agent one eighth of a byte to hash: hashing stays well below the GPU's time for large ``n``.
Bits are packed row by row, most significant bit first (``numpy.packbits``); a leaf is a block
of ``leaf_rows(n)`` consecutive rows of one round (about 8 KiB), leaves are ordered by round
then block, ``leaf = sha256(0x00 ‖ bytes)``, ``node = sha256(0x01 ‖ left ‖ right)``, and the
leaf list is padded to a power of two with ``sha256(0x02)``.

A guessed bit is right about half the time; a block the agent did not compute fails each
checked position with probability about 1/2, and the server checks several positions in each
of several blocks per round. What is proved is throughput on an ``n × n`` working set; see
docs/architecture.md, "What we verify and what we trust".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

PROOF_VERSION: Final = 2
"""The proof protocol this module defines (``VerifyArgs.proof_version``)."""
MODULUS: Final = 17
VALUE_SPAN: Final = 8
"""Matrix entries are integers in [-VALUE_SPAN, VALUE_SPAN]."""
MIN_N: Final = 64
MAX_N: Final = 65536
LEAF_TARGET_BYTES: Final = 8192

MASK32: Final = 0xFFFFFFFF
_MIX: Final = 0x45D9F3B
"""Below 2**27: ``x * _MIX`` of a 32-bit ``x`` fits a signed 64-bit integer (torch has no
unsigned 64-bit arithmetic on GPUs)."""

MATRIX_A: Final = 0
MATRIX_B: Final = 1
_ROUND_MAPS: Final = 2

_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"
EMPTY_LEAF: Final = hashlib.sha256(b"\x02").digest()

IntArray = npt.NDArray[np.int64]
PackedBits = npt.NDArray[np.uint8]


# --- the matrices ------------------------------------------------------------------------------


def mix32(x: Any) -> Any:
    """A 32-bit integer hash (bijective) on ints or integer arrays holding values in [0, 2**32)."""
    x = (((x >> 16) ^ x) * _MIX) & MASK32
    x = (((x >> 16) ^ x) * _MIX) & MASK32
    return (x >> 16) ^ x


def matrix_key(seed: int, which: int) -> int:
    """The key of base matrix ``which`` (``MATRIX_A``, ``MATRIX_B``) or of the round maps."""
    low, high = seed & MASK32, (seed >> 32) & MASK32
    key: int = mix32(low ^ mix32(high ^ mix32(which + 1)))
    return key


def entry_codes(rows: Any, cols: Any, key: int) -> Any:
    """Base-matrix entries plus 8, in [0, 17), at row indices ``rows`` and column indices
    ``cols``: pass ``rows`` as a column and ``cols`` as a row to get a block.

    Any array library whose integer arrays support ``^ >> * & + %``: numpy on uint32 (wrapping
    multiplication does the masking) or int64, torch on int64 (GPUs have no unsigned 64-bit
    arithmetic). The row key and the column are mixed twice, with xor and with addition, so no
    row is a shifted or permuted copy of another.
    """
    row_key = mix32(mix32(rows) ^ key)
    return mix32((mix32(cols ^ row_key) + row_key) & MASK32) % MODULUS


def entries(rows: Any, cols: Any, key: int) -> Any:
    """Base-matrix entries in [-8, 8] (signed arrays only; see ``entry_codes``)."""
    return entry_codes(rows, cols, key) - VALUE_SPAN


def base_rows(seed: int, which: int, rows: Sequence[int] | IntArray, n: int) -> IntArray:
    """Rows ``rows`` of base matrix ``which`` (``A`` or ``Bᵀ``) as int64, one per row."""
    r = np.asarray(rows, dtype=np.uint32).reshape(-1, 1)
    c = np.arange(n, dtype=np.uint32).reshape(1, -1)
    codes = entry_codes(r, c, matrix_key(seed, which))
    out: IntArray = codes.astype(np.int64) - VALUE_SPAN
    return out


@dataclass(frozen=True, slots=True)
class RoundMap:
    """Round ``t`` maps entries of ``A`` with ``(alpha_a, beta_a)`` and of ``Bᵀ`` with
    ``(alpha_b, beta_b)``: ``x → (alpha·(x + 8) + beta) mod 17 − 8``, a bijection of [-8, 8]."""

    alpha_a: int
    beta_a: int
    alpha_b: int
    beta_b: int


def round_map(seed: int, t: int) -> RoundMap:
    h1 = mix32(matrix_key(seed, _ROUND_MAPS) ^ mix32(t))
    h2 = mix32(h1 ^ 1)
    h3 = mix32(h2 ^ 2)
    h4 = mix32(h3 ^ 3)
    return RoundMap(1 + h1 % 16, h2 % MODULUS, 1 + h3 % 16, h4 % MODULUS)


def remap(x: Any, alpha: int, beta: int) -> Any:
    """``x → (alpha·(x + 8) + beta) mod 17 − 8`` on any integer-valued array (float or int)."""
    return (alpha * (x + VALUE_SPAN) + beta) % MODULUS - VALUE_SPAN


def round_rows(seed: int, which: int, t: int, rows: Sequence[int], n: int) -> IntArray:
    """Rows of ``A_t`` (``which=MATRIX_A``) or ``B_tᵀ`` (``MATRIX_B``): O(n) per row."""
    m = round_map(seed, t)
    alpha, beta = (m.alpha_a, m.beta_a) if which == MATRIX_A else (m.alpha_b, m.beta_b)
    out: IntArray = remap(base_rows(seed, which, rows, n), alpha, beta)
    return out


def expected_residues(seed: int, n: int, t: int, positions: Sequence[tuple[int, int]]) -> list[int]:
    """The server side: ``C_t[i, j] mod 17`` at each ``(i, j)``, exactly: a row of ``A_t``
    times a column of ``B_t`` rebuilt from the seed, O(n) per entry (one pass for them all)."""
    rows = sorted({i for i, _ in positions})
    cols = sorted({j for _, j in positions})
    a = round_rows(seed, MATRIX_A, t, rows, n)
    b = round_rows(seed, MATRIX_B, t, cols, n)
    ai = np.searchsorted(rows, [i for i, _ in positions])
    bj = np.searchsorted(cols, [j for _, j in positions])
    return [int(v) % MODULUS for v in np.einsum("kn,kn->k", a[ai], b[bj])]


def commit_bits(c: npt.NDArray[Any]) -> PackedBits:
    """The committed bits of a product ``C`` (exact integers, any dtype), packed per row.

    A float product is turned into integers first and reduced with integer arithmetic: the
    floating-point remainder answered "invalid value" now and then on finite products in long
    test runs on a 2-core VM (the status flag, not the values, was wrong), and numpy turns that
    flag into a warning, an error under the tests' settings. Callers make sure the product is
    finite (``tesai.agent.proof.numpy_rounds``)."""
    values = np.asarray(c)
    if values.dtype.kind == "f":
        with np.errstate(all="ignore"):
            values = values.astype(np.int64)
    residues = np.remainder(values, MODULUS).astype(np.uint8)
    packed: PackedBits = np.packbits(residues & 1, axis=1)
    return packed


def bit_at(block: bytes, n: int, row: int, col: int) -> int:
    """The committed bit of entry ``(row, col)`` inside an opened block (row relative to it)."""
    byte = block[row * (n // 8) + col // 8]
    return (byte >> (7 - col % 8)) & 1


# --- shape of the commitment -----------------------------------------------------------------


def check_n(n: int) -> None:
    """Raise ``ValueError`` unless ``n`` is a power of two in [MIN_N, MAX_N]."""
    if not (MIN_N <= n <= MAX_N and n & (n - 1) == 0):
        raise ValueError(f"matrix size {n} is not a power of two in [{MIN_N}, {MAX_N}]")


def leaf_rows(n: int) -> int:
    """Rows per leaf: a power of two giving leaves of about ``LEAF_TARGET_BYTES``."""
    rows = max(1, LEAF_TARGET_BYTES // (n // 8))
    return min(n, 1 << (rows.bit_length() - 1))


def blocks_per_round(n: int) -> int:
    return n // leaf_rows(n)


def leaf_index(n: int, t: int, block: int) -> int:
    return t * blocks_per_round(n) + block


def leaf_count(n: int, rounds: int) -> int:
    return rounds * blocks_per_round(n)


def tree_depth(count: int) -> int:
    """Levels above the leaves in a tree of ``count`` leaves (padded to a power of two)."""
    return max(count - 1, 0).bit_length()


def work_ops(n: int, rounds: int) -> float:
    """Multiply-adds counted twice: ``2 n³`` per round."""
    return 2.0 * n**3 * rounds


# --- Merkle tree ---------------------------------------------------------------------------------


def leaf_hash(data: bytes | memoryview) -> bytes:
    h = hashlib.sha256(_LEAF)
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def tree_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last (a one-element list)."""
    width = 1 << tree_depth(len(leaves))
    level = leaves + [EMPTY_LEAF] * (width - len(leaves))
    levels = [level]
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def merkle_path(levels: list[list[bytes]], index: int) -> list[bytes]:
    """Sibling hashes from leaf ``index`` up to (not including) the root."""
    path = []
    for level in levels[:-1]:
        path.append(level[index ^ 1])
        index >>= 1
    return path


def root_from_path(leaf: bytes, index: int, path: Sequence[bytes]) -> bytes:
    """The root that ``leaf`` at ``index`` with sibling ``path`` hashes up to."""
    node = leaf
    for sibling in path:
        node = node_hash(sibling, node) if index & 1 else node_hash(node, sibling)
        index >>= 1
    return node


def encode_block(data: bytes | memoryview) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def decode_block(text: str) -> bytes | None:
    """The bytes of an opened block, or None when ``text`` is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
