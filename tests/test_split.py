"""The split never puts one patient in two subsets; the leaky protocol is loud."""

from __future__ import annotations

import pandas as pd
import pytest

from tumorseg.data.split import LeakySplitWarning, SplitSettings, _counts, make_split


def slice_table(n_glioma=95, n_other=51, slices=20):
    rows = []
    for i in range(n_glioma + n_other):
        cohort = "glioma" if i < n_glioma else "other_neoplasm"
        rows += [{"case_id": f"BraTS-SSA-{i:05d}-000", "cohort": cohort, "slice": 30 + s, "row": s} for s in range(slices)]
    return pd.DataFrame(rows)


def test_no_patient_in_two_subsets_and_fractions():
    split = make_split(slice_table(), SplitSettings())
    per_case = split.groupby("case_id")["split"].nunique()
    assert (per_case == 1).all()
    cases = split.drop_duplicates("case_id")
    counts = cases["split"].value_counts().to_dict()
    assert counts == {"train": 103, "val": 22, "test": 21}  # largest remainder per cohort
    by_cohort = cases.groupby(["cohort", "split"]).size().unstack()
    assert by_cohort.loc["glioma"].tolist() == [14, 67, 14]  # test, train, val (alphabetical)
    assert by_cohort.loc["other_neoplasm"].tolist() == [7, 36, 8]


def test_seeded_and_seed_sensitive():
    a = make_split(slice_table(), SplitSettings(seed=1))
    b = make_split(slice_table().sample(frac=1, random_state=3), SplitSettings(seed=1))  # input order irrelevant
    c = make_split(slice_table(), SplitSettings(seed=2))
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_small_cohorts_still_get_val_and_test():
    assert _counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    assert sum(_counts(7, (0.7, 0.15, 0.15))) == 7
    split = make_split(slice_table(4, 3, 2), SplitSettings())
    assert set(split["split"]) == {"train", "val", "test"}


def test_slice_level_reproduces_the_leak_with_a_warning():
    with pytest.warns(LeakySplitWarning, match="memorisation"):
        split = make_split(slice_table(20, 10), SplitSettings(level="slice"))
    leaked = (split.groupby("case_id")["split"].nunique() > 1).sum()
    assert leaked > 20
    assert split["split"].value_counts()["train"] == 420
