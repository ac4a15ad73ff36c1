"""The rhpc inputs of the MRP models (Gao et al.): radiological, histopathological, personal and
clinical variables, built from the fields a prepared cohort records in ``datalist.json``
(``clinical_fields``: name, group, type, levels).

The variables are age (the ``clinical`` group's number field, modelled as a continuous value as in
the paper) and every field of the ``rhpc`` group (categorical). The Table 1 fields of Jing & Wang
(agents, race, HR, BluePrint...) are not rhpc variables: the rhpc group already holds the
paper's molecular subtype and therapy, and the pCR bundles encode Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

UNKNOWN = "unknown"  # the level a prepared cohort gives a blank optional value


class RhpcEncoding:
    """Per patient: one level index per categorical variable (``unknown`` is a level of its own,
    as in Table 2 of the paper), the raw age (z-scored inside the network) and the knowledge
    predictor's targets (index among the known levels, -1 where unknown: ignored by the loss).

    ``levels`` sizes the input embeddings, ``known_levels`` the knowledge predictor's heads.
    """

    def __init__(self, fields: Sequence[dict]):
        ages = [f for f in fields if f.get("name") == "age" and f.get("group") == "clinical"]
        if len(ages) != 1 or ages[0].get("type") != "number":
            raise ValueError("the MRP models need the clinical field 'age' (number)")
        self.fields = [dict(f) for f in fields if f.get("group") == "rhpc"]
        if not self.fields:
            raise ValueError("the cohort records no rhpc field (group 'rhpc' in its schema)")
        wrong = [f["name"] for f in self.fields if f["type"] != "category" or not f.get("levels")]
        if wrong:
            raise ValueError(f"rhpc fields must be categories with levels: {wrong}")
        self.names = [f["name"] for f in self.fields]
        self.levels = [len(f["levels"]) for f in self.fields]
        self._known = [[level for level in f["levels"] if level != UNKNOWN] for f in self.fields]
        self.known_levels = [len(k) for k in self._known]
        self.unknown_level = [f["levels"].index(UNKNOWN) if UNKNOWN in f["levels"] else -1 for f in self.fields]

    def encode(self, patient: str, clinical: dict) -> dict:
        """``{"rhpc_index": int64 (K,), "age": float32 (1,), "rhpc_target": int64 (K,)}``; a
        missing age is NaN (the network then uses the training mean and the loss ignores it)."""
        index, target = [], []
        for f, known in zip(self.fields, self._known):
            value = clinical.get(f["name"])
            if value not in f["levels"]:
                raise ValueError(f"patient {patient}: rhpc field '{f['name']}' has "
                                 f"{'no value' if value is None else f'unknown value {value!r}'}")
            index.append(f["levels"].index(value))
            target.append(known.index(value) if value in known else -1)
        age = clinical.get("age")
        return {"rhpc_index": np.asarray(index, dtype=np.int64),
                "age": np.asarray([np.nan if age is None else age], dtype=np.float32),
                "rhpc_target": np.asarray(target, dtype=np.int64)}


def age_statistics(ages: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of the known ages of the training patients (the network's
    age buffers and the knowledge loss's age scale)."""
    ages = np.asarray(ages, dtype=np.float64)
    ages = ages[np.isfinite(ages)]
    if not ages.size:
        raise ValueError("no known age among the training patients")
    return float(ages.mean()), float(max(ages.std(), 1e-6))
