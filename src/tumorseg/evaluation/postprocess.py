"""Post-processing of predicted label maps, its rules fitted on the validation patients only.

What BraTS winners do after the network, as explicit, fitted rules:

* per region, predicted connected components (26-connected) smaller than a volume are dropped: a
  WT component becomes background, a TC component edema (it stays tumour), an ET component
  necrotic core (it stays core);
* optionally (``wt_core_mm3``, off by default), whole-tumour components holding less predicted tumour core (TC) than
  a volume are dropped: a tumour has a core, edema-like mimics do not; but neither do some small true lesions, and
  held out on the default's validation patients the rule lost more than it gained (bench/results/core_rule_choice.md);
* per region, components whose mean predicted probability of that region is below a level are dropped
  the same way: on the default's validation patients the networks' false-positive tumours (mimics) are
  predicted with less confidence than true tumours (unet: mean WT probability 0.70-0.89 against 0.85-0.95);
* a patient whose whole predicted ET is smaller than a volume gets it relabelled as necrotic core
  (patients without enhancing tumour are common, and one false ET voxel there scores ET Dice 0);
* with ``keep_one_tumour`` (the default) the WT rules never empty a patient whose network predicted tumour:
  its WT component of most tumour probability (summed over its voxels; the largest without probabilities) is kept. Every BraTS-Africa case has a
  tumour, so a rule that deletes a patient's only tumour trades one whole patient (Dice 0) for nothing; a size or
  confidence level fitted on a dozen validation patients does not see that case often enough to avoid it.

``postprocess@<model>`` fits the thresholds on the validation patients (greedily, WT then TC then
ET, size then core then confidence, each step keeping the candidate with the best mean lesion-wise Dice of its region among those
under which no validation patient's legacy Dice of *any* region falls by more than ``patient_tolerance``, against the
rules chosen before that step: a dropped WT component takes its core and enhancing voxels with it, so a WT rule is
also judged on TC and ET; ties go to the smaller threshold) and writes them,
with the validation figures behind each choice, to ``models/<model>/postprocess.json``; evaluate,
``tumorseg predict`` and the app apply them. The test patients play no part.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from tumorseg.config import Checked, SettingError, in_range
from tumorseg.data.labels import REGION_NAMES, region_mask
from tumorseg.evaluation.metrics import CONNECTIVITY_26, TruthLesions, dice

log = logging.getLogger(__name__)

POSTPROCESS_FILE = "postprocess.json"
# What a dropped component of each region becomes: the next region out (BraTS labels 0 / 2 / 1).
DROPPED_LABEL = {"WT": 0, "TC": 2, "ET": 1}
NETC_LABEL = 1


@dataclass(frozen=True)
class PostprocessSettings(Checked):
    """The ``postprocess`` block of params.yaml: on/off and the candidate thresholds tried on validation."""

    enabled: bool = True
    component_mm3: tuple[float, ...] = field(default=(0, 10, 25, 50, 100, 200, 400), metadata=in_range(0))
    # candidate minimum mean probability of a component's region (0: keep every component)
    component_probability: tuple[float, ...] = field(default=(0,), metadata=in_range(0, 1))
    et_volume_mm3: tuple[float, ...] = field(default=(0, 10, 25, 50, 100, 200, 400), metadata=in_range(0))
    # candidate minimum predicted tumour-core volume inside a WT component (0: keep coreless components)
    wt_core_mm3: tuple[float, ...] = field(default=(0,), metadata=in_range(0))
    # never let the WT rules delete every tumour of a patient (BraTS-Africa: every case has one)
    keep_one_tumour: bool = True
    # legacy Dice a validation patient may lose to a threshold before the threshold counts as making it worse (and is
    # not allowed), per fitted step (so up to twice this over a region's size and confidence steps): 0 lets a speck
    # that grazes the tumour (a loss of 0.00003) veto every rule for every patient
    patient_tolerance: float = field(default=0.0, metadata=in_range(0, 0.05))

    def check(self) -> None:
        for key in ("component_mm3", "component_probability", "et_volume_mm3", "wt_core_mm3"):
            values = getattr(self, key)
            if not values or 0 not in values:
                raise SettingError(key, f"= {list(values)}; must include 0 (no post-processing) among the candidates")


@dataclass(frozen=True)
class PostprocessRules:
    """Fitted thresholds; the all-zero rules change nothing."""

    min_component_mm3: dict[str, float] = field(default_factory=lambda: {r: 0.0 for r in REGION_NAMES})
    min_et_volume_mm3: float = 0.0
    min_component_probability: dict[str, float] = field(default_factory=lambda: {r: 0.0 for r in REGION_NAMES})
    keep_one_tumour: bool = False
    min_wt_core_mm3: float = 0.0

    def apply(self, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), probabilities: np.ndarray | None = None) -> np.ndarray:
        """The post-processed copy of a (X, Y, Z) BraTS label map; ``probabilities``: the (3, X, Y, Z) uint8 quantized
        WT / TC / ET probabilities it was thresholded from, needed by the confidence rule."""
        return self.apply_steps(self.steps(), labels.copy(), labels, spacing, probabilities)

    def steps(self) -> list[tuple]:
        """The rules in the order ``apply`` runs them, one ``(rule, region, threshold)`` each, a threshold of 0 (or
        False) included: two rule sets that differ in one threshold share every step before it, which the fit then
        computes once per patient instead of once per candidate (``_scores``)."""
        out: list[tuple] = []
        for region in REGION_NAMES:
            out.append(("small", region, self.min_component_mm3.get(region, 0.0)))
            if region == "WT":
                out.append(("coreless", region, self.min_wt_core_mm3))
            out.append(("unconfident", region, self.min_component_probability.get(region, 0.0)))
            if region == "WT":
                out.append(("keep_one", region, self.keep_one_tumour))
        out.append(("small_et", "ET", self.min_et_volume_mm3))
        return out

    @staticmethod
    def apply_steps(steps: list[tuple], out: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0),
                    probabilities: np.ndarray | None = None) -> np.ndarray:
        """``out`` after ``steps`` (from ``steps()``); ``labels``: the map before any rule, which keep_one restores from."""
        for rule, region, threshold in steps:
            if not threshold:
                continue
            if rule == "small":
                out = drop_small_components(out, region, threshold, spacing)
            elif rule == "coreless":
                out = drop_coreless_components(out, threshold, spacing)
            elif rule == "unconfident":
                if probabilities is None:
                    raise ValueError(f"post-processing drops {region} components below mean probability {threshold}: "
                                     f"it needs the predicted probabilities, not only the labels")
                out = drop_unconfident_components(out, region, threshold, probabilities[REGION_NAMES.index(region)])
            elif rule == "keep_one":
                out = restore_one_tumour(labels, out, None if probabilities is None else probabilities[0])
            elif rule == "small_et":
                out = relabel_small_et(out, threshold, spacing)
            else:
                raise ValueError(f"unknown post-processing step {rule!r}")
        return out

    @property
    def is_identity(self) -> bool:
        return (self.min_et_volume_mm3 == 0 and self.min_wt_core_mm3 == 0 and not any(self.min_component_mm3.values())
                and not any(self.min_component_probability.values()))


def restore_one_tumour(before: np.ndarray, after: np.ndarray, wt_probability: np.ndarray | None) -> np.ndarray:
    """``after`` with ``before``'s WT component of most tumour probability (its voxels' probabilities summed: a
    confident tumour, never a confident one-voxel speck; the largest when ``wt_probability`` is None) put back
    when the WT rules removed every WT component ``before`` had."""
    wt_before = region_mask(before, "WT")
    if not wt_before.any() or region_mask(after, "WT").any():
        return after
    components, n = ndimage.label(wt_before, structure=CONNECTIVITY_26)
    sizes = _per_component(components, n)
    if wt_probability is None:
        keep = int(np.argmax(sizes)) + 1
    else:
        keep = int(np.argmax(_per_component(components, n, wt_probability))) + 1
    out = after.copy()
    inside = components == keep
    out[inside] = before[inside]
    return out


def drop_components(labels: np.ndarray, region: str, should_drop) -> np.ndarray:
    """``labels`` with the 26-connected components of ``region`` that ``should_drop`` picks relabelled as the next
    region out (see DROPPED_LABEL). ``should_drop(components, n)`` gets the component map and count
    and returns a boolean array over components 1..n; the one place the rules below label and replace components."""
    components, n = ndimage.label(region_mask(labels, region), structure=CONNECTIVITY_26)
    if n == 0:
        return labels
    dropped = np.flatnonzero(should_drop(components, n)) + 1
    if len(dropped) == 0:
        return labels
    is_dropped = np.zeros(n + 1, dtype=bool)  # looked up per voxel: np.isin would sort the component map
    is_dropped[dropped] = True
    out = labels.copy()
    out[is_dropped[components]] = DROPPED_LABEL[region]
    return out


def _per_component(components: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Voxel count (or sum of ``weights``) of each component 1..n."""
    return np.bincount(components.ravel(), weights=None if weights is None else weights.ravel().astype(np.float64),
                       minlength=n + 1)[1:]


def drop_unconfident_components(labels: np.ndarray, region: str, min_probability: float, probability: np.ndarray) -> np.ndarray:
    """Components of ``region`` whose mean probability (``probability``: (X, Y, Z) uint8 quantized) is below
    ``min_probability`` become the next region out (see DROPPED_LABEL)."""
    return drop_components(labels, region, lambda c, n: _per_component(c, n, probability) / _per_component(c, n) / 255 < min_probability)


def drop_small_components(labels: np.ndarray, region: str, min_mm3: float, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Components of ``region`` under ``min_mm3`` become the next region out (see DROPPED_LABEL)."""
    if min_mm3 <= 0:
        return labels
    return drop_components(labels, region, lambda c, n: _per_component(c, n) * float(np.prod(spacing)) < min_mm3)


def drop_coreless_components(labels: np.ndarray, min_core_mm3: float, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """WT components holding less than ``min_core_mm3`` of tumour core (labels 1 and 3) become background."""
    if min_core_mm3 <= 0:
        return labels
    core = region_mask(labels, "TC")
    return drop_components(labels, "WT", lambda c, n: _per_component(c, n, core) * float(np.prod(spacing)) < min_core_mm3)


def relabel_small_et(labels: np.ndarray, min_mm3: float, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """All ET becomes necrotic core when the patient's ET volume is under ``min_mm3``."""
    et = region_mask(labels, "ET")
    if min_mm3 <= 0 or not et.any() or et.sum() * float(np.prod(spacing)) >= min_mm3:
        return labels
    out = labels.copy()
    out[et] = NETC_LABEL
    return out


class LazyCases:
    """The validation patients as ``fit_rules`` reads them, loaded one at a time each time they are iterated: memory
    holds one patient, not the validation set (at 240 x 240 x 155 a patient's labels, truth and probabilities take
    up to ~45 MB, so holding them all grew with the number of validation patients)."""

    def __init__(self, case_ids: list[str], load):
        self.case_ids, self.load = list(case_ids), load

    def __len__(self) -> int:
        return len(self.case_ids)

    def __iter__(self):
        return (self.load(c) for c in self.case_ids)


def _scores(cases, trials: list[PostprocessRules], region: str) -> tuple[np.ndarray, np.ndarray]:
    """(trials, patients) lesion-wise Dice of ``region`` and (trials, regions, patients) legacy Dice of every region
    (REGION_NAMES order) under each of ``trials``, over (pred, truth, spacing, probabilities) cases; each case is read
    once for all the trials, its ground-truth lesions decomposed once, the rules the trials share (those before the
    one they differ in) applied once, and a trial whose label map equals an earlier one's (a threshold below every
    component, say) takes that one's scores."""
    lesion, legacy = np.zeros((len(trials), len(cases))), np.zeros((len(trials), len(REGION_NAMES), len(cases)))
    k_region = REGION_NAMES.index(region)
    steps = [trial.steps() for trial in trials]
    shared = next((n for n, column in enumerate(zip(*steps)) if len(set(column)) > 1), len(steps[0]))
    for j, (pred, truth, spacing, probabilities) in enumerate(cases):
        truths = [region_mask(truth, r) for r in REGION_NAMES]
        lesions = TruthLesions(truths[k_region], spacing)
        start = PostprocessRules.apply_steps(steps[0][:shared], pred.copy(), pred, spacing, probabilities)
        scored: list[tuple[np.ndarray, int]] = []  # (label map, the trial that scored it)
        for i, trial in enumerate(trials):
            out = PostprocessRules.apply_steps(steps[i][shared:], start, pred, spacing, probabilities)
            same = next((earlier for seen, earlier in scored if np.array_equal(seen, out)), None)
            if same is not None:
                lesion[i, j], legacy[i, :, j] = lesion[same, j], legacy[same, :, j]
                continue
            scored.append((out, i))
            for k, r in enumerate(REGION_NAMES):
                p = region_mask(out, r)
                legacy[i, k, j] = dice(p, truths[k])
                if k == k_region:
                    lesion[i, j] = lesions.score(p, with_hd95=False).dice
    return lesion, legacy


def fit_rules(cases: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray | None]],
              settings: PostprocessSettings) -> tuple[PostprocessRules, list[dict]]:
    """Thresholds chosen on ``cases`` (the validation patients' predicted and true label maps, spacing and predicted
    probabilities), and
    the figures behind every choice: one record per step with each candidate's mean Dice."""
    steps: list[dict] = []
    if not settings.enabled:
        return PostprocessRules(), steps
    rules = PostprocessRules(keep_one_tumour=settings.keep_one_tumour)
    plan = [step for r in REGION_NAMES for step in ((r, "component", sorted(settings.component_mm3)),
                                                    (r, "core", sorted(settings.wt_core_mm3) if r == "WT" else []),
                                                    (r, "probability", sorted(settings.component_probability)))
            if len(step[2]) > 1 or step[1] == "component"] + [("ET", "volume", sorted(settings.et_volume_mm3))]
    for region, kind, candidates in plan:
        # ascending: the first candidate, 0, changes nothing and is the baseline
        lesion, legacy = _scores(cases, [_with(rules, region, kind, float(t)) for t in candidates], region)
        k = REGION_NAMES.index(region)
        # (trials, regions, patients): a patient counts as worse when any region's legacy Dice falls beyond the tolerance
        worse = legacy < legacy[0] - max(settings.patient_tolerance, 1e-9)
        tried = [{UNITS[kind]: float(t), "lesion_dice": round(float(lesion[i].mean()), 6),
                  "legacy_dice": round(float(legacy[i, k].mean()), 6),
                  "patients_worse": int(worse[i].any(axis=0).sum()),
                  "patients_worse_by_region": {r: int(worse[i, m].sum()) for m, r in enumerate(REGION_NAMES)}}
                 for i, t in enumerate(candidates)]
        # Non-inferiority per patient (within patient_tolerance), not on the mean: on a handful of validation patients a mean can trade one
        # patient's lost lesion for another's removed false positive, and such a threshold does not carry over.
        allowed = [t for t in tried if t["patients_worse"] == 0]
        best = max(allowed, key=lambda t: (t["lesion_dice"], -t[UNITS[kind]]))
        rules = _with(rules, region, kind, best[UNITS[kind]])
        steps.append({"region": region, "rule": RULES[kind], f"chosen_{UNITS[kind]}": best[UNITS[kind]], "candidates": tried})
    return rules, steps


UNITS = {"component": "mm3", "volume": "mm3", "probability": "probability", "core": "mm3"}
RULES = {"component": "min_component_mm3", "volume": "min_et_volume_mm3", "probability": "min_component_probability",
         "core": "min_wt_core_mm3"}


def _with(rules: PostprocessRules, region: str, kind: str, threshold: float) -> PostprocessRules:
    if kind == "component":
        return replace(rules, min_component_mm3={**rules.min_component_mm3, region: threshold})
    if kind == "probability":
        return replace(rules, min_component_probability={**rules.min_component_probability, region: threshold})
    if kind == "core":
        return replace(rules, min_wt_core_mm3=threshold)
    return replace(rules, min_et_volume_mm3=threshold)


def write_rules(path: Path, rules: PostprocessRules, enabled: bool, steps: list[dict], validation: dict,
                patient_tolerance: float = 0.0, tta: str | list[str] | None = None) -> None:
    """``patient_tolerance`` is recorded because the steps' ``patients_worse`` counts losses beyond it; ``tta``
    (the mirrorings averaged into the probabilities fitted on) because a rule on probabilities holds for those."""
    from tumorseg.fileio import atomic_file

    doc = {"enabled": enabled, "rules": asdict(rules), "fitted_on": "validation patients", "steps": steps,
           "validation": validation, "patient_tolerance": patient_tolerance, "tta": tta}
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_rules(path: Path) -> PostprocessRules:
    """The rules in a postprocess.json; identity rules when post-processing was turned off there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no fitted post-processing; run `dvc repro postprocess@<model>` "
                                f"(or pass --no-postprocess)")
    doc = json.loads(path.read_text())
    try:
        if not doc["enabled"]:
            return PostprocessRules()
        rules = doc["rules"]
        return PostprocessRules({r: float(v) for r, v in rules["min_component_mm3"].items()}, float(rules["min_et_volume_mm3"]),
                                {r: float(v) for r, v in rules.get("min_component_probability", {}).items()},
                                bool(rules.get("keep_one_tumour", False)), float(rules.get("min_wt_core_mm3", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a tumorseg post-processing file ({type(exc).__name__}: {exc}); rerun "
                         f"`dvc repro postprocess@<model>`") from None


def read_fitted_tta(path: Path) -> str | None:
    """The mirrorings (none | lr | all) of the probabilities a postprocess.json was fitted on; None when it does
    not say (written before it recorded them) or its ensemble members differed."""
    tta = json.loads(Path(path).read_text()).get("tta")
    return tta if isinstance(tta, str) else None


def fitted_tta(index: dict) -> str | list[str] | None:
    """The mirrorings of an inference index: a model's string; for the ensemble its members' one value when they agree,
    else their list (kept as a record; predict then has no single setting to default to)."""
    tta = index.get("tta")
    if isinstance(tta, list) and len(set(tta)) == 1:
        return tta[0]
    return tta


def any_probability(settings: PostprocessSettings) -> bool:
    return any(settings.component_probability) and settings.enabled


def fit_postprocess(name: str, predictions_dir: Path, split_path: Path, manifest_path: Path, raw_dir: Path, out_path: Path,
                    settings: PostprocessSettings) -> dict:
    """Fit the rules on the validation patients and record the validation figures with and without them
    (the figures the report chooses the champion by, computed as evaluate computes the test ones)."""
    from tumorseg.data.split import read_split
    from tumorseg.evaluation.metrics import summarise
    from tumorseg.evaluation.predictions import Predictions, patients
    from tumorseg.evaluation.scoring import Truths, score_patients

    preds = Predictions(predictions_dir)
    cases = patients(read_split(split_path), "val")
    missing = sorted(set(cases) - set(preds.cases("val")))
    if missing:
        raise ValueError(f"{predictions_dir}: no predictions for validation patients {missing}; rerun `dvc repro infer@{name}`")
    truths = Truths(raw_dir, manifest_path)
    val = LazyCases(cases, lambda c: (preds.labels(c), truths(c), preds.spacing(c),
                                      preds.probability_volume(c) if any_probability(settings) else None))
    rules, steps = fit_rules(val, settings)
    scored = score_patients(preds, cases, truths, {"raw": None, "post": rules.apply})
    validation = {"n_patients": len(cases), "postprocessed": summarise(*scored["post"]), "raw": summarise(*scored["raw"])}
    write_rules(out_path, rules, settings.enabled, steps, validation, settings.patient_tolerance, fitted_tta(preds.index))
    post, raw = validation["postprocessed"], validation["raw"]
    log.info("%s post-processing fitted on %d validation patients: components >= %s mm3, WT components with >= %g mm3 of core, "
             "of mean probability >= %s, ET volume >= %g mm3; lesion-wise Dice WT %.3f -> %.3f, TC %.3f -> %.3f, ET %.3f -> %.3f", name,
             len(cases), rules.min_component_mm3, rules.min_wt_core_mm3, rules.min_component_probability, rules.min_et_volume_mm3, raw["lesion_dice_WT"], post["lesion_dice_WT"], raw["lesion_dice_TC"],
             post["lesion_dice_TC"], raw["lesion_dice_ET"], post["lesion_dice_ET"])
    return {"rules": rules, "validation": validation}


def main(model: str, params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``postprocess@<model>`` (``model`` may be ``ensemble``)."""
    from tumorseg import paths
    from tumorseg.config import from_mapping, read_params
    from tumorseg.logs import setup_logging

    setup_logging()
    params = read_params(params_path)
    return fit_postprocess(model, paths.INFERENCE_DIR / model, paths.SPLIT, paths.MANIFEST, paths.RAW_DIR,
                           paths.MODELS_DIR / model / POSTPROCESS_FILE,
                           from_mapping(PostprocessSettings, params.get("postprocess"), "postprocess"))
