"""BraTS case ids, ``BraTS-<cohort>-<subject>-<timepoint>`` (BraTS-SSA-00002-000). Apart from the NIfTI readers so
that the split can tell one patient's timepoints without importing them (and without rerunning with them)."""

from __future__ import annotations

import re

CASE_ID_RE = re.compile(r"^BraTS-[A-Za-z]+-\d{5}-\d{3}$")


def subject_id(case_id: str) -> str:
    """The patient of a case: two timepoints of one patient (BraTS 2023 glioma has some) are one patient for the
    split. Ids outside the BraTS pattern are their own patient."""
    return case_id.rsplit("-", 1)[0] if CASE_ID_RE.match(case_id) else case_id
