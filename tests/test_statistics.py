"""Bootstrap intervals and the paired Wilcoxon test."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg.evaluation.statistics import bootstrap_ci, paired_wilcoxon


def test_bootstrap_interval_holds_the_mean_narrows_with_patients_and_is_seeded():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.8, 0.1, 12), rng.normal(0.8, 0.1, 400)
    lo, hi = bootstrap_ci(few)
    assert lo < few.mean() < hi
    assert bootstrap_ci(few) == (lo, hi)  # seeded: the same interval every run
    lo_many, hi_many = bootstrap_ci(many)
    assert hi_many - lo_many < (hi - lo) / 3  # ~1/sqrt(n): 400 patients give a much narrower interval than 12
    # about 95% coverage: the normal-theory interval has nearly the same width
    assert hi_many - lo_many == pytest.approx(2 * 1.96 * many.std(ddof=1) / np.sqrt(len(many)), rel=0.1)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_wilcoxon_finds_a_consistent_paired_difference_only():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.6, 0.9, 12)
    assert paired_wilcoxon(a, a - 0.05) < 0.01  # every patient worse: significant with 12 pairs
    noisy = [paired_wilcoxon(a, a + rng.normal(0, 0.05, 12)) for _ in range(200)]
    assert 0.02 < np.mean(np.array(noisy) < 0.05) < 0.12  # noise alone: "significant" about 5% of the time at 5%
    assert paired_wilcoxon(a, a) == 1.0
    with pytest.raises(ValueError, match="one value per patient"):
        paired_wilcoxon(a, a[:5])
