"""The compared methods of Jing & Wang (sections 2.5-2.6) as bundle + override files.

A method names the bundle it trains, the override files applied when training and when
testing, and (stage 2 only) the override files of the stage-1 teacher it learns from: the
full teacher for every stage-2 variant, so that an ablation changes only the stage-2 inputs. Methods
that share a trained model (the teacher tested on T0-T2, Conventional #2 = the same model
tested on T0-T1) are trained once. The classical references (``lr_*``) name a feature set of
``evaluation.baselines`` instead of a bundle.

The MRP methods of Gao et al. use the ``mrp_fusion`` bundle, one network per method
(``network``: its ``model`` key ``rhpc``, ``imr`` or ``img``; ``mrp``: the ensemble of the imr
and img models, its weight chosen on each split's validation fold). Methods that see MRI are
tested in one treatment phase (``PHASES``): ``<name>_pre`` on T0 only, ``<name>_mid`` on T0-T2,
``<name>`` on every visit (post-treatment, before surgery); rhpc and mammograms are pre-treatment
data, so ``mrp_rhpc``, ``mrp_lr_rhpc`` (a logistic regression on the rhpc model's inputs) and
``mrp_img*`` are the same in every phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
TEACHER, DUALTASK = "pcr_teacher", "pcr_dualtask"
MRP = "mrp_fusion"
SKLEARN = "sklearn"
# treatment phases of the MRP methods: the MRI visits a test patient may contribute by then
# (None: every visit the model has, T0-T3). Rhpc variables and mammograms are pre-treatment.
PHASES = {"pre": ("T0",), "mid": ("T0", "T1", "T2"), "post": None}
PHASE_TEXT = {"pre": "pre-treatment (T0)", "mid": "mid-treatment (T0-T2)", "post": "post-treatment (T0-T3)"}
# suffix of the truth.csv MRI oracles of a phase: T0 alone (pre); T0-T2 otherwise (T3 is in no oracle)
PHASE_ORACLE = {"pre": "_t0", "mid": "", "post": ""}


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    bundle: str
    train: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    teacher: tuple[str, ...] | None = None  # override files of the stage-1 teacher (stage 2 only)
    features: str | None = None  # feature set of a classical reference (bundle SKLEARN)
    network: str | None = None  # MRP: the bundle's model (rhpc, imr, img) or mrp (ensemble of imr and img)
    img_train: tuple[str, ...] = ()  # MRP ensemble: override files of its img model (``train``: its imr model's)
    phase: str | None = None  # MRP methods that see MRI: treatment phase (PHASES)
    oracle: str | None = None  # truth.csv column of the same inputs (synthetic cohorts)

    @property
    def model_key(self) -> str:
        """Name of the trained model this method uses (shared by methods that share a model);
        the MRP ensemble: the key of its imr model."""
        if self.features is not None:
            return f"{SKLEARN}+{self.features}"
        return model_key(self.bundle, self.train, self.teacher, self.imr_or_network)

    @property
    def imr_or_network(self) -> str | None:
        return "imr" if self.network == "mrp" else self.network

    @property
    def visits(self) -> tuple[str, ...] | None:
        """MRI visits a test patient contributes (None: every visit the model has)."""
        return PHASES[self.phase] if self.phase else None

    @property
    def trainings(self) -> set[tuple]:
        """``(bundle, train, teacher, network)`` of every model this method needs."""
        if self.features is not None:
            return set()
        if self.network == "mrp":
            return {(self.bundle, self.train, None, "imr"), (self.bundle, self.img_train, None, "img")}
        needed = {(self.bundle, self.train, self.teacher, self.network)}
        if self.teacher is not None:
            needed.add((TEACHER, self.teacher, None, None))
        return needed


def model_key(bundle: str, train: tuple[str, ...], teacher: tuple[str, ...] | None = None,
              network: str | None = None) -> str:
    key = "+".join((bundle if network is None else f"{bundle}.{network}",) + train)
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
TWO_STAGE = tuple(METHODS)  # the benchmark's methods (Jing & Wang)


def _mrp_methods() -> list[Method]:
    """The MRP methods: rhpc and mammography models (and a logistic regression on the rhpc model's
    inputs), and per phase the MRI model, the ensemble and the ablations of the knowledge
    predictor and the time embedding."""
    methods = [Method("mrp_rhpc", "MRP: rhpc model (tabular, uni-modal baseline)", MRP, network="rhpc",
                      oracle="p_rhpc"),
               Method("mrp_lr_rhpc", "Logistic regression: age + rhpc variables (the rhpc model's inputs)", SKLEARN,
                      features="rhpc", oracle="p_rhpc"),
               Method("mrp_img", "MRP: iMGrhpc (mammograms + rhpc; patients with mammograms)", MRP, network="img",
                      oracle="p_rhpc_mg"),
               Method("mrp_img_no_knowledge", "MRP: iMGrhpc without the knowledge predictor", MRP, ("no_knowledge",),
                      network="img", oracle="p_rhpc_mg")]
    variants = {"": ((), (), ""), "_no_knowledge": (("no_knowledge",), ("no_knowledge",), " without the knowledge "
                                                                                          "predictor"),
                "_no_time_embedding": (("no_time_embedding",), (), " without the time embedding")}
    for phase in ("post", "mid", "pre"):
        suffix = "" if phase == "post" else f"_{phase}"
        for variant, (imr_train, img_train, text) in variants.items():
            methods.append(Method(f"mrp_imr{variant}{suffix}", f"MRP: iMRrhpc{text}, {PHASE_TEXT[phase]}", MRP,
                                  imr_train, network="imr", phase=phase, oracle="p_rhpc_mri" + PHASE_ORACLE[phase]))
            methods.append(Method(f"mrp{variant}{suffix}", f"MRP ensemble{text}: iMRrhpc {PHASE_TEXT[phase]} + "
                                  "iMGrhpc", MRP, imr_train, network="mrp", img_train=img_train, phase=phase,
                                  oracle="p_rhpc_mg_mri" + PHASE_ORACLE[phase]))
    return methods


METHODS.update((m.name, m) for m in _mrp_methods())
MRP_METHODS = tuple(name for name in METHODS if name not in TWO_STAGE)


def is_mrp(name: str) -> bool:
    """A method of the MRP comparison (Gao et al.): an mrp_fusion network or its classical reference."""
    return name in MRP_METHODS


# figure panels: the paper's main comparison (Fig. 2), the classical references, visits (Fig. 3), inputs (Fig. 4)
FIGURE_GROUPS = {
    "comparison": ("dualtask", "conv1", "conv2", "teacher"),
    "classical": ("dualtask", "lr_clinical", "lr_ftv", "lr_ftv_t2"),
    "visits": ("dualtask", "dualtask_t0", "dualtask_t1"),
    "inputs": ("dualtask", "dualtask_no_clinical", "dualtask_no_subtype", "dualtask_no_clinical_subtype"),
    # MRP (Gao et al.): the models of each phase (Fig. 3), the phases, the ablations
    "mrp_post": ("mrp", "mrp_imr", "mrp_img", "mrp_rhpc"),
    "mrp_mid": ("mrp_mid", "mrp_imr_mid", "mrp_img", "mrp_rhpc"),
    "mrp_pre": ("mrp_pre", "mrp_imr_pre", "mrp_img", "mrp_rhpc"),
    "mrp_phases": ("mrp", "mrp_mid", "mrp_pre"),
    "mrp_ablations": ("mrp", "mrp_no_knowledge", "mrp_no_time_embedding", "mrp_imr", "mrp_imr_no_knowledge",
                      "mrp_imr_no_time_embedding"),
}


def parse_methods(text: str) -> list[Method]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    return [METHODS[n] for n in names]
