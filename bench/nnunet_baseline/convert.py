"""Build nnU-Net's Dataset501_SynthBraTS from the project's raw cases. Run with the nnU-Net venv's python,
nnUNet_raw set:

    convert.py --cases WORK/cases.json

imagesTr/labelsTr hold our train + val patients (splits_final.json later separates them), imagesTs the
test patients (no labels: score.py reads the ground truth from data/raw). Channels 0-3 = t1n, t1c, t2w, t2f.

Labels are NOT remapped: our masks already use the BraTS 2023 labels (1 NETC, 2 SNFH/edema, 3 ET), and
nnU-Net trains region-based on WT = {1,2,3}, TC = {1,3}, ET = {3}. This is nnU-Net's own BraTS setup
(Dataset137), which first remaps BraTS-2021 labels (1->2, 2->1, 4->3) and so writes TC = (2,3) and
regions_class_order (1,2,3); on unmapped labels the same thing is TC = (1,3) and regions_class_order (2,1,3):
painting WT -> 2, then TC -> 1, then ET -> 3 gives back exactly 1 NETC / 2 SNFH / 3 ET. A legacy ET label 4,
if present, becomes 3, as tumorseg.data.brats.load_mask does.
"""
import argparse
import json
import os
import shutil

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from nnunetv2.paths import nnUNet_raw

NAME = 'Dataset501_SynthBraTS'
SEQUENCES = ('t1n', 't1c', 't2w', 't2f')


def copy_case(case_id: str, case_dir: str, images: str, labels: str | None) -> None:
    for i, seq in enumerate(SEQUENCES):
        shutil.copyfile(os.path.join(case_dir, f'{case_id}-{seq}.nii.gz'), os.path.join(images, f'{case_id}_{i:04d}.nii.gz'))
    if labels is None:
        return
    src, dst = os.path.join(case_dir, f'{case_id}-seg.nii.gz'), os.path.join(labels, f'{case_id}.nii.gz')
    img = sitk.ReadImage(src)
    seg = sitk.GetArrayFromImage(img)
    found = set(np.unique(seg).tolist())
    assert found <= {0, 1, 2, 3, 4}, (case_id, found)
    if 4 not in found:
        shutil.copyfile(src, dst)
        return
    fixed = sitk.GetImageFromArray(np.where(seg == 4, 3, seg).astype(np.uint8))
    fixed.CopyInformation(img)
    sitk.WriteImage(fixed, dst, useCompression=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cases', required=True)
    args = ap.parse_args()
    cases = json.load(open(args.cases))
    out = os.path.join(nnUNet_raw, NAME)
    dirs = {k: os.path.join(out, k) for k in ('imagesTr', 'labelsTr', 'imagesTs')}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    training = cases['train'] + cases['val']
    for c in training:
        copy_case(c, cases['case_dirs'][c], dirs['imagesTr'], dirs['labelsTr'])
    for c in cases['test']:
        copy_case(c, cases['case_dirs'][c], dirs['imagesTs'], None)
    generate_dataset_json(out,
                          channel_names={0: 'T1n', 1: 'T1c', 2: 'T2w', 3: 'T2f'},
                          labels={'background': 0, 'whole tumor': (1, 2, 3), 'tumor core': (1, 3), 'enhancing tumor': (3,)},
                          regions_class_order=(2, 1, 3),
                          num_training_cases=len(training),
                          file_ending='.nii.gz',
                          dataset_name=NAME,
                          description=f"tumorseg's raw data: {len(cases['train'])} train + {len(cases['val'])} val "
                                      f"patients in imagesTr, {len(cases['test'])} test patients in imagesTs",
                          license='see the source data', reference='tumorseg bench/nnunet_baseline', dataset_release='1.0')
    print(f'{out}: {len(training)} training cases, {len(cases["test"])} test cases')


if __name__ == '__main__':
    main()
