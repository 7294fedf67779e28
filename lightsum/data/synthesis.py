"""Exact class-conditional sampling of digit-sum sequences, without rejection.

A string of ``seq_len`` uniform digits is uniform among the strings with its sum, so a draw given
the class is: pick the sum ``s`` with probability proportional to ``C[seq_len, s]`` (the number of
strings with that sum), then pick the string uniformly among those with sum ``s``. The second
step walks left to right: with ``L`` digits left to place and ``r`` still to add up,
``P(next digit = d) = C[L - 1, r - d] / C[L, r]``. Every row of a batch takes that step at once.

Precision: each step compares a 31-bit uniform integer with thresholds ``round(2**31 * P(digit <=
d))``, so every digit probability is exact to within ``2**-31``, an impossible digit (zero
probability) is never drawn, and the walk always ends on the requested sum. The whole string's
distribution is within total variation ``seq_len * 2**-28`` of exact (about 1e-7 for ``seq_len``
30);
the sum is drawn with float64 uniforms.
"""

from __future__ import annotations

import functools
import math

import torch

# Step thresholds are fractions of 2**31: uniforms come from torch.randint(0, 2**31) as int32,
# exactly uniform (power-of-two range), one per row and position.
_SCALE_BITS = 31
_SCALE = 1 << _SCALE_BITS
# Guide table: the top _GUIDE_BITS bits of a uniform pick a bucket; for most (state, bucket)
# pairs the digit is the same over the whole bucket, so one byte gather decides it. 64 buckets
# leave at most 9 of them ambiguous per state (usually ~2% of rows), which fall back to comparing
# all ten thresholds. Wider guides were no faster and cost 4x the memory per step.
_GUIDE_BITS = 6
_AMBIGUOUS = 255


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")


@functools.lru_cache(maxsize=16)
def _exact_counts(seq_len: int) -> tuple[tuple[int, ...], ...]:
    """Row ``t`` holds the exact (Python int) counts of length-``t`` strings per sum 0..9t."""
    rows = [(1,)]
    for t in range(1, seq_len + 1):
        prev = rows[-1]
        prefix = [0]
        for c in prev:
            prefix.append(prefix[-1] + c)
        top = len(prev) - 1
        # C[t, s] = sum of C[t-1, s-d] for d in 0..9, read off the prefix sums of row t-1.
        rows.append(tuple(prefix[min(s, top) + 1] - prefix[max(s - 9, 0)] for s in range(9 * t + 1)))
    return tuple(rows)


def sum_counts(seq_len: int) -> torch.Tensor:
    """Number of digit strings of each length and sum.

    Args:
        seq_len: longest string length.

    Returns:
        float64 tensor ``C`` of shape ``(seq_len + 1, 9 * seq_len + 1)``: ``C[t, s]`` is the number
        of digit strings of length ``t`` summing to ``s`` (each exact count rounded once to float64).

    Raises:
        ValueError: ``seq_len`` < 1, or so large (> 308) that counts overflow float64.
    """
    _check_seq_len(seq_len)
    width = 9 * seq_len + 1
    try:
        rows = [[float(c) for c in row] + [0.0] * (width - len(row)) for row in _exact_counts(seq_len)]
    except OverflowError:
        raise ValueError(f"seq_len={seq_len}: counts up to 10**{seq_len} overflow float64") from None
    return torch.tensor(rows, dtype=torch.float64)


def _bounds(label: int, seq_len: int, threshold: int) -> tuple[int, int]:
    """Inclusive range of sums of class ``label``; empty (lo > hi) if the class is impossible."""
    top = 9 * seq_len
    return (0, min(threshold - 1, top)) if label == 0 else (max(threshold, 0), top)


def class_probability(seq_len: int, threshold: int) -> float:
    """Exact ``P(digit sum < threshold)`` for ``seq_len`` uniform digits: the rate of label 0.

    Args:
        seq_len: digits per string.
        threshold: label is 1 when the digit sum is >= threshold.

    Returns:
        The probability, correctly rounded from the exact rational value.
    """
    _check_seq_len(seq_len)
    lo, hi = _bounds(0, seq_len, threshold)
    counts = _exact_counts(seq_len)[seq_len]
    # int / int is correctly rounded in Python however large the integers.
    return sum(counts[lo : hi + 1]) / 10**seq_len


def sum_probabilities(seq_len: int) -> torch.Tensor:
    """Exact ``P(digit sum = s)`` for ``s`` in ``0..9 * seq_len``, float64 (each correctly rounded).

    The weights that carry a sample drawn per sum back to the natural distribution.
    """
    _check_seq_len(seq_len)
    return torch.tensor([c / 10**seq_len for c in _exact_counts(seq_len)[seq_len]], dtype=torch.float64)


def window_sums(n: int, lo: int, hi: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` digit sums drawn uniformly from ``[lo, hi]`` (clipped to the possible sums), int64.

    With ``digits_with_sums`` this draws sequences whose sums are uniform over a window: the
    sums near a threshold, which uniform digits make rare, as often as each other.
    """
    lo, hi = max(lo, 0), min(hi, 9 * seq_len)
    if lo > hi:
        raise ValueError(f"the window [{lo}, {hi}] holds no digit sum of {seq_len} digits")
    return torch.randint(lo, hi + 1, (n,), generator=generator, dtype=torch.int64, device=generator.device)


@functools.lru_cache(maxsize=16)
def _log_counts(seq_len: int) -> torch.Tensor:
    """float64 ``log C`` of shape ``(seq_len + 1, 9 * seq_len + 1)``, -inf where there is no string.

    Logs keep ratios of counts exact to ~1e-14 for any ``seq_len`` (counts alone overflow past 308).
    """
    width = 9 * seq_len + 1
    rows = [[math.log(c) for c in row] + [-math.inf] * (width - len(row)) for row in _exact_counts(seq_len)]
    return torch.tensor(rows, dtype=torch.float64)


@functools.lru_cache(maxsize=16)
def _step_tables(seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-state digit thresholds and guide, for ``L`` digits left and remaining sum ``r``.

    Returns:
        ``thresholds``: int64 ``(seq_len + 1, W, 10)``, ``round(2**31 * P(next digit <= d | L, r))``,
        last column exactly ``2**31``; the next digit for uniform ``u`` in ``[0, 2**31)`` is the
        number of thresholds ``<= u``. States with no string get ``2**31`` throughout (never used).
        ``guide``: uint8 ``(seq_len + 1, W * 2**_GUIDE_BITS)``, at ``r * 2**bits + bucket`` the digit
        of every ``u`` in that bucket, or ``_AMBIGUOUS`` when the bucket straddles a threshold.
    """
    log_c = _log_counts(seq_len)
    width = log_c.shape[1]
    # shifted[t, r, d] = log C[t, r - d] (-inf for r < d): windows over 9 columns of -inf padding.
    padded = torch.cat([torch.full((seq_len + 1, 9), -math.inf, dtype=torch.float64), log_c], dim=1)
    shifted = padded.unfold(1, 10, 1).flip(-1)[:-1]  # rows t = L - 1 for L = 1..seq_len
    peak = shifted.amax(-1, keepdim=True)
    reachable = torch.isfinite(peak)
    weights = torch.where(reachable, (shifted - peak.where(reachable, 0.0)).exp(), 0.0)
    cum = weights.cumsum(-1)
    # Normalising by the row's own total (= C[L, r] up to rounding) makes the last entry exactly 1.
    cum = cum / cum[..., -1:].where(reachable, 1.0)
    steps = (cum * _SCALE).round().to(torch.int64)
    # A digit of zero probability adds exactly 0 to the cumsum, so its threshold equals the one
    # before it and no u selects it; the last threshold is exactly 2**31 > u, so no digit 10.
    steps = torch.where(reachable, steps, _SCALE)
    steps[..., -1] = _SCALE
    thresholds = torch.cat([torch.full((1, width, 10), _SCALE, dtype=torch.int64), steps])

    buckets = 1 << _GUIDE_BITS
    shift = _SCALE_BITS - _GUIDE_BITS
    starts = torch.arange(buckets, dtype=torch.int64) << shift
    ends = starts + (1 << shift) - 1
    guide = torch.empty(seq_len + 1, width * buckets, dtype=torch.uint8)
    for left in range(seq_len + 1):  # one L at a time keeps memory at W x buckets for long strings
        # The digit is monotone in u, so equal digits at both ends of a bucket settle the bucket.
        first = torch.searchsorted(thresholds[left], starts.expand(width, -1).contiguous(), right=True)
        last = torch.searchsorted(thresholds[left], ends.expand(width, -1).contiguous(), right=True)
        guide[left] = torch.where(first == last, first, _AMBIGUOUS).flatten()
    return thresholds.to(device), guide.to(device)


def _walk(sums: torch.Tensor, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Digits for already validated ``sums`` (on the generator's device), uint8 ``(n, seq_len)``."""
    device = generator.device
    n = len(sums)
    thresholds, guide = _step_tables(seq_len, device)
    shift = _SCALE_BITS - _GUIDE_BITS
    remaining = sums.to(torch.int32)  # int32 halves the memory traffic of the int64 default
    # Position-major output: each step writes one contiguous row instead of a strided column.
    out = torch.empty(seq_len, n, dtype=torch.uint8, device=device)
    for i in range(seq_len):
        left = seq_len - i
        u = torch.randint(0, _SCALE, (n,), generator=generator, dtype=torch.int32, device=device)
        digit = guide[left].index_select(0, (remaining << _GUIDE_BITS) | (u >> shift))
        unsure = (digit == _AMBIGUOUS).nonzero().squeeze(1)
        if unsure.numel():
            rows = thresholds[left].index_select(0, remaining.index_select(0, unsure))
            digit[unsure] = (rows <= u.index_select(0, unsure).unsqueeze(1)).sum(1, dtype=torch.uint8)
        out[i] = digit
        remaining -= digit
    return out.t().contiguous()


def digits_with_sums(sums: torch.Tensor, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """One digit string per requested sum, uniform among all strings with that sum.

    Args:
        sums: 1-D integer tensor of target sums.
        seq_len: digits per string.
        generator: source of all randomness; the output lives on its device.

    Returns:
        uint8 tensor ``(len(sums), seq_len)`` whose row ``i`` sums to ``sums[i]``.

    Raises:
        ValueError: ``sums`` is not a 1-D integer tensor, or a sum lies outside ``[0, 9 * seq_len]``.
    """
    _check_seq_len(seq_len)
    if sums.dim() != 1 or sums.dtype.is_floating_point or sums.dtype.is_complex or sums.dtype == torch.bool:
        raise ValueError(f"sums must be a 1-D integer tensor, got {sums.dtype} of shape {tuple(sums.shape)}")
    sums = sums.to(generator.device, torch.int64)
    top = 9 * seq_len
    bad = (sums < 0) | (sums > top)
    if bad.any():
        raise ValueError(f"sum {sums[bad][0].item()} is outside [0, {top}] for seq_len={seq_len}")
    return _walk(sums, seq_len, generator)


def digits_per_sum(lo: int, hi: int, per_sum: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``per_sum`` strings of each sum ``lo..hi``, in sum order, drawn exactly (``digits_with_sums``)."""
    return digits_with_sums(torch.arange(lo, hi + 1).repeat_interleave(per_sum), seq_len, generator)


def class_digits(n: int, label: int, seq_len: int, threshold: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` uniform digit strings conditioned on their label, drawn exactly.

    Args:
        n: number of strings.
        label: 0 for digit sum < ``threshold``, 1 for digit sum >= ``threshold``.
        seq_len: digits per string.
        threshold: the label boundary.
        generator: source of all randomness; the output lives on its device.

    Returns:
        uint8 tensor ``(n, seq_len)`` distributed as uniform digit strings given the label.

    Raises:
        ValueError: ``n`` < 0, ``label`` not 0 or 1, ``seq_len`` < 1, or no string has this label.
    """
    _check_seq_len(seq_len)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}")
    lo, hi = _bounds(label, seq_len, threshold)
    if lo > hi:
        rule = f"sum < {threshold}" if label == 0 else f"sum >= {threshold}"
        raise ValueError(
            f"label {label} ({rule}) is impossible for seq_len={seq_len}: digit sums lie in [0, {9 * seq_len}]"
        )
    # P(sum = s | class) is proportional to C[seq_len, s]; logs avoid overflow for long strings.
    log_c = _log_counts(seq_len)[seq_len, lo : hi + 1]
    cdf = (log_c - log_c.max()).exp().cumsum(0)
    cdf = (cdf / cdf[-1]).to(generator.device)
    cdf[-1] = 1.0  # u < 1, so the search never runs past the last sum
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=generator.device)
    sums = lo + torch.searchsorted(cdf, u, right=True)
    return _walk(sums, seq_len, generator)
