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


def test_the_timepoints_of_one_patient_share_a_subset():
    """BraTS-<cohort>-<subject>-<timepoint>: a second scan of a patient in test while the first trains would leak."""
    table = slice_table(30, 10, 2)
    again = table[table["case_id"].str.endswith(("1-000", "7-000"))].assign(
        case_id=lambda t: t["case_id"].str.replace(r"-000$", "-001", regex=True))
    split = make_split(pd.concat([table, again]), SplitSettings())
    subset = split.drop_duplicates("case_id").set_index("case_id")["split"]
    assert len(again["case_id"].unique()) == 8
    for case in again["case_id"].unique():
        assert subset[case] == subset[case[:-4] + "-000"]


def test_one_case_per_patient_draws_as_over_case_ids():
    """With one timepoint per patient (BraTS-Africa) the grouping changes nothing: the committed split stands."""
    import numpy as np

    table = slice_table(30, 10, 2)
    split = make_split(table, SplitSettings(seed=7)).drop_duplicates("case_id").set_index("case_id")["split"]
    rng, expected = np.random.default_rng(7), {}
    for cohort in ("glioma", "other_neoplasm"):  # the draw over sorted case ids, cohort by cohort
        ids = sorted(table.loc[table["cohort"] == cohort, "case_id"].unique())
        order, bounds = rng.permutation(len(ids)), np.cumsum([0] + _counts(len(ids), (0.70, 0.15, 0.15)))
        for subset, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
            expected.update({ids[i]: subset for i in order[lo:hi]})
    assert split.to_dict() == expected


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
