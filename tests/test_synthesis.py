"""Exact class-conditional digit synthesis: counts, probabilities, and goodness of fit."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from lightsum.data.synthesis import class_digits, class_probability, digits_with_sums, sum_counts


def exact_counts(seq_len: int) -> list[int]:
    """Counts of length-``seq_len`` strings per sum, by Python-int convolution (independent of the module)."""
    counts = [1]
    for _ in range(seq_len):
        nxt = [0] * (len(counts) + 9)
        for s, c in enumerate(counts):
            for d in range(10):
                nxt[s + d] += c
        counts = nxt
    return counts


def chi_square_p(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value; bins expecting fewer than 5 draws are pooled into one."""
    observed, probs = observed.double(), probs.double() / probs.sum()
    expected = probs * observed.sum()
    sparse = expected < 5
    if sparse.any():
        observed = torch.cat([observed[~sparse], observed[sparse].sum().view(1)])
        expected = torch.cat([expected[~sparse], expected[sparse].sum().view(1)])
    stat = ((observed - expected) ** 2 / expected).sum()
    df = torch.tensor(len(observed) - 1, dtype=torch.float64)
    # Upper tail of chi-square(df): regularised upper incomplete gamma Q(df/2, stat/2).
    return torch.special.gammaincc(df / 2, stat / 2).item()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seq_len", [3, 4])
def test_sum_counts_match_brute_force(seq_len: int) -> None:
    c = sum_counts(seq_len)
    assert c.dtype == torch.float64 and c.shape == (seq_len + 1, 9 * seq_len + 1)
    for t in range(seq_len + 1):
        brute = Counter(sum(digits) for digits in itertools.product(range(10), repeat=t))
        expected = [brute.get(s, 0) for s in range(9 * seq_len + 1)]
        assert c[t].tolist() == expected
        assert c[t].sum().item() == 10**t


def test_sum_counts_long_rows_are_exact_to_float64() -> None:
    c = sum_counts(30)
    assert c[30].tolist() == [float(x) for x in exact_counts(30)]


def test_class_probability_is_exact() -> None:
    counts = exact_counts(30)
    exact = sum(counts[:100]) / 10**30
    assert class_probability(30, 100) == pytest.approx(exact, rel=1e-12)
    assert class_probability(30, 100) == pytest.approx(0.01175, abs=5e-6)
    assert class_probability(30, 0) == 0.0
    assert class_probability(30, 271) == 1.0
    assert class_probability(3, 14) == pytest.approx(sum(exact_counts(3)[:14]) / 1000, rel=1e-15)


def test_digits_with_sums_hit_every_requested_sum() -> None:
    sums = torch.randint(0, 271, (20_000,), generator=gen(1))
    sums[:3] = torch.tensor([0, 270, 9])  # the extremes and a sum whose first digit 9 has p ~ 6e-9
    digits = digits_with_sums(sums, 30, gen(2))
    assert digits.dtype == torch.uint8 and digits.shape == (20_000, 30)
    assert int(digits.max()) <= 9
    assert torch.equal(digits.sum(1, dtype=torch.int64), sums)
    assert digits_with_sums(torch.tensor([], dtype=torch.int64), 30, gen()).shape == (0, 30)


@pytest.mark.parametrize("bad", [-1, 271])
def test_digits_with_sums_rejects_impossible_sums(bad: int) -> None:
    with pytest.raises(ValueError, match=f"sum {bad} is outside"):
        digits_with_sums(torch.tensor([5, bad]), 30, gen())


def test_digits_with_sums_rejects_float_sums() -> None:
    with pytest.raises(ValueError, match="integer"):
        digits_with_sums(torch.tensor([5.0]), 30, gen())


@pytest.mark.parametrize("label", [0, 1])
def test_class_sums_follow_the_conditional_distribution(label: int) -> None:
    digits = class_digits(200_000, label, 30, 100, gen(3 + label))
    sums = digits.sum(1, dtype=torch.int64)
    assert bool((sums < 100).all()) if label == 0 else bool((sums >= 100).all())
    weights = sum_counts(30)[30]
    in_class = torch.arange(271) < 100 if label == 0 else torch.arange(271) >= 100
    observed = torch.bincount(sums, minlength=271)[in_class]
    assert chi_square_p(observed, weights[in_class]) > 1e-3


def test_digits_given_a_sum_are_exchangeable() -> None:
    digits = digits_with_sums(torch.full((200_000,), 100), 30, gen(5))
    c = sum_counts(30)
    # P(digit at any position = d | sum 100) = C[29, 100 - d] / C[30, 100], the same at every position.
    marginal = c[29, 100 - torch.arange(10)] / c[30, 100]
    assert marginal.sum().item() == pytest.approx(1.0, abs=1e-12)
    for position in (0, 15, 29):
        observed = torch.bincount(digits[:, position].long(), minlength=10)
        assert chi_square_p(observed, marginal) > 1e-3


def test_every_string_with_a_given_sum_is_equally_likely() -> None:
    strings = sorted(s for s in itertools.product(range(10), repeat=3) if sum(s) == 5)
    assert len(strings) == 21
    digits = digits_with_sums(torch.full((42_000,), 5), 3, gen(6))
    seen = Counter(map(tuple, digits.tolist()))
    assert sorted(seen) == strings
    observed = torch.tensor([seen[s] for s in strings])
    assert chi_square_p(observed, torch.ones(21)) > 1e-3


def test_class_digits_are_uniform_over_the_class() -> None:
    # seq_len 3, label 1 at threshold 20: every string with sum >= 20 equally likely.
    strings = sorted(s for s in itertools.product(range(10), repeat=3) if sum(s) >= 20)
    digits = class_digits(100 * len(strings), 1, 3, 20, gen(7))
    seen = Counter(map(tuple, digits.tolist()))
    assert sorted(seen) == strings
    observed = torch.tensor([seen[s] for s in strings])
    assert chi_square_p(observed, torch.ones(len(strings))) > 1e-3


def test_same_seed_same_digits_and_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a = class_digits(5_000, 0, 30, 100, gen(8))
    b = class_digits(5_000, 0, 30, 100, gen(8))
    c = class_digits(5_000, 0, 30, 100, gen(9))
    d = digits_with_sums(torch.full((5_000,), 120), 30, gen(8))
    e = digits_with_sums(torch.full((5_000,), 120), 30, gen(8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and torch.equal(d, e)
    assert not torch.equal(a, c)


def test_zero_samples() -> None:
    assert class_digits(0, 1, 30, 100, gen()).shape == (0, 30)


@pytest.mark.parametrize(("label", "threshold"), [(0, 0), (0, -5), (1, 271), (1, 1000)])
def test_impossible_class_is_an_error(label: int, threshold: int) -> None:
    with pytest.raises(ValueError, match=f"label {label} .* is impossible for seq_len=30"):
        class_digits(10, label, 30, threshold, gen())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        class_digits(-1, 0, 30, 100, gen())
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        class_digits(10, 2, 30, 100, gen())
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        class_digits(10, 1, 0, 100, gen())


def test_extreme_classes_have_one_string() -> None:
    # Only the all-zero string has sum < 1, only the all-nine string has sum >= 270.
    assert torch.equal(class_digits(4, 0, 30, 1, gen()), torch.zeros(4, 30, dtype=torch.uint8))
    assert torch.equal(class_digits(4, 1, 30, 270, gen()), torch.full((4, 30), 9, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_output_on_the_generators_device() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    digits = class_digits(10_000, 0, 30, 100, g)
    assert digits.device.type == "cuda" and digits.dtype == torch.uint8
    assert bool((digits.sum(1, dtype=torch.int64) < 100).all())


def test_sum_probabilities_are_the_exact_counts_over_ten_to_the_length() -> None:
    from lightsum.data.synthesis import sum_probabilities

    p = sum_probabilities(30)
    assert p.shape == (271,) and float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(p[:100].sum()) == pytest.approx(class_probability(30, 100), rel=1e-12)
    assert torch.equal(
        sum_probabilities(2),
        torch.tensor(
            [c / 100 for c in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)], dtype=torch.float64
        ),
    )


def test_window_sums_are_uniform_over_the_window_and_clipped_to_possible_sums() -> None:
    from lightsum.data.synthesis import window_sums

    g = torch.Generator().manual_seed(0)
    sums = window_sums(60_000, 85, 114, 30, g)
    counts = torch.bincount(sums - 85, minlength=30)
    assert sums.min() == 85 and sums.max() == 114 and counts.min() > 1800 and counts.max() < 2200
    assert set(window_sums(1000, -5, 3, 30, g).tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="holds no digit sum"):
        window_sums(1, 300, 310, 30, g)
