"""The compared methods of Jing & Wang (sections 2.5-2.6) as bundle + override files.

A method names the bundle it trains, the override files applied when training and when
testing, and (stage 2 only) the override files of the stage-1 teacher it learns from: the
full teacher for every stage-2 variant, so that an ablation changes only the stage-2 inputs. Methods
that share a trained model (the teacher tested on T0-T2, Conventional #2 = the same model
tested on T0-T1) are trained once. The classical references (``lr_*``) name a feature set of
``evaluation.baselines`` instead of a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
TEACHER, DUALTASK = "pcr_teacher", "pcr_dualtask"
SKLEARN = "sklearn"


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    bundle: str
    train: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    teacher: tuple[str, ...] | None = None  # override files of the stage-1 teacher (stage 2 only)
    features: str | None = None  # feature set of a classical reference (bundle SKLEARN)

    @property
    def model_key(self) -> str:
        """Name of the trained model this method uses (shared by methods that share a model)."""
        if self.features is not None:
            return f"{SKLEARN}+{self.features}"
        return model_key(self.bundle, self.train, self.teacher)


def model_key(bundle: str, train: tuple[str, ...], teacher: tuple[str, ...] | None = None) -> str:
    key = "+".join((bundle,) + train)
    if teacher is not None:
        key += "__teacher" + "".join("+" + t for t in teacher)
    return key


METHODS = {m.name: m for m in (
    Method("dualtask", "2-stage dual-task: T0+T1+clinical+subtypes", DUALTASK, teacher=()),
    Method("dualtask_no_clinical_subtype", "2-stage dual-task without clinical & subtypes (full teacher)", DUALTASK,
           ("no_clinical_subtype",), teacher=()),
    Method("dualtask_no_clinical", "2-stage dual-task without clinical (full teacher)", DUALTASK, ("no_clinical",),
           teacher=()),
    Method("dualtask_no_subtype", "2-stage dual-task without subtypes (full teacher)", DUALTASK, ("no_subtype",),
           teacher=()),
    Method("dualtask_t0", "2-stage dual-task: T0+clinical+subtypes", DUALTASK, ("t0_only",), teacher=()),
    Method("dualtask_t1", "2-stage dual-task: T1+clinical+subtypes", DUALTASK, ("t1_only",), teacher=()),
    Method("conv1", "Conventional #1: trained and tested on T0+T1", TEACHER, ("t0_t1",), ("t0_t1",)),
    Method("conv2", "Conventional #2: trained on T0+T1+T2, tested on T0+T1", TEACHER, (), ("t0_t1",)),
    Method("teacher", "Stage-1 teacher: T0+T1+T2 (late-information reference)", TEACHER),
    Method("lr_clinical", "Logistic regression: clinical+subtypes", SKLEARN, features="clinical"),
    Method("lr_ftv", "Logistic regression: clinical+subtypes+FTV T0, change T1 (I-SPY standard)", SKLEARN,
           features="ftv"),
    Method("lr_ftv_t2", "Logistic regression: clinical+subtypes+FTV T0, changes T1, T2", SKLEARN, features="ftv_t2"),
)}

# figure panels: the paper's main comparison (Fig. 2), the classical references, visits (Fig. 3), inputs (Fig. 4)
FIGURE_GROUPS = {
    "comparison": ("dualtask", "conv1", "conv2", "teacher"),
    "classical": ("dualtask", "lr_clinical", "lr_ftv", "lr_ftv_t2"),
    "visits": ("dualtask", "dualtask_t0", "dualtask_t1"),
    "inputs": ("dualtask", "dualtask_no_clinical", "dualtask_no_subtype", "dualtask_no_clinical_subtype"),
}


def parse_methods(text: str) -> list[Method]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return [METHODS[n] for n in names]
