"""Cohort schema: where each model field comes from in a clinical table, and how DICOM is found.

A schema is a YAML file (presets in ``preprocessing/schemas/``; see ``synthetic.yaml`` for every
option). It names the table's id, label and site columns and, per model field, its ``group``
(``clinical`` or ``subtype``, Table 1 of Jing & Wang, which the pCR bundles encode; ``rhpc``, the
further radiological, histopathological, personal and clinical variables of the MRP fusion
model), its ``type`` and its vocabulary:

- ``number``: a float column, optionally within ``range``;
- ``binary``: 0/1, also spelled yes/no, positive/negative, pos/neg, true/false;
- ``category``: one level per value; ``levels`` maps each level to further accepted spellings
  (matching ignores case and surrounding spaces). ``optional: true`` turns a blank cell into the
  explicit level ``unknown``; ``multiple`` maps a value naming several levels (``Asian;White``)
  to one level;
- ``multi_hot``: a set of levels, from a text column split by ``separator`` (``Paclitaxel +
  Neratinib``) or from one 0/1 column per level (``columns``).

Fields the schema does not name are absent from the cohort's encoding, never imputed. ``extra``
columns are copied to the datalist for subgroup analyses and never encoded. The prepared cohort
records the fields (``field_record``) and the bundles build their encoding from that record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRESETS = Path(__file__).parent / "schemas"
GROUPS = ("clinical", "subtype", "rhpc")
TYPES = ("number", "binary", "category", "multi_hot")
UNKNOWN = "unknown"
TRUE = ("1", "yes", "y", "positive", "pos", "true", "+")
FALSE = ("0", "no", "n", "negative", "neg", "false", "-")


class SchemaError(ValueError):
    """The schema file itself is wrong (fatal)."""


def cell(value) -> str | None:
    """A table cell as stripped text (None when blank); whole numbers lose their ``.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+\.0+", text):  # a whole number stored as text by a CSV export: 12345.0
        text = text.split(".")[0]
    return text or None


def shown(text: str) -> str:
    """``text`` quoted for a message when it is short and holds no digit (a category spelling),
    else nothing: a mis-mapped column may hold dates or record numbers."""
    return f" '{text}'" if len(text) <= 40 and not re.search(r"\d", text) else ""


def _key(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Field:
    name: str
    group: str
    type: str
    column: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # multi_hot: level -> 0/1 column
    levels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # level -> further spellings
    separator: str | None = None
    optional: bool = False
    multiple: dict | None = None  # category: {"separator", "level"}
    range: tuple[float, float] | None = None

    def source_columns(self) -> list[str]:
        return list(self.columns.values()) if self.columns else [self.column]

    def vocabulary(self) -> list[str]:
        """Levels in encoding order: the schema's, then ``multiple`` and ``unknown`` if used (an
        ``unknown`` entry in ``levels`` only adds spellings of it, e.g. "Not reported")."""
        levels = [level for level in (self.columns or self.levels) if level != UNKNOWN]
        if self.multiple:
            levels.append(self.multiple["level"])
        if self.optional and self.type == "category":
            levels.append(UNKNOWN)
        return levels

    def _spellings(self) -> dict[str, str]:
        spellings = {}
        for level, others in self.levels.items():
            for text in (level, *others):
                spellings[_key(str(text))] = level
        return spellings

    def parse(self, row: dict):
        """The field's value from a table row, or raise ``ValueError`` with a one-line reason."""
        if self.type == "multi_hot" and self.columns:
            flags = {level: binary(self.name, row.get(column), column) for level, column in self.columns.items()}
            return _non_empty(self.name, sorted(level for level, on in flags.items() if on))
        text = cell(row.get(self.column))
        if text is None:
            if self.optional and self.type == "category":
                return UNKNOWN
            raise ValueError(f"clinical field '{self.name}' (column {self.column}) is missing")
        if self.type == "number":
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"clinical field '{self.name}' (column {self.column}) is not a number"
                                 f"{shown(text)}") from None
            if self.range and not self.range[0] <= number <= self.range[1]:
                raise ValueError(f"clinical field '{self.name}' (column {self.column}) out of range {list(self.range)}")
            return int(number) if number.is_integer() else number
        if self.type == "binary":
            return binary(self.name, text, self.column)
        spellings = self._spellings()
        if self.type == "multi_hot":
            parts = [p.strip() for p in text.split(self.separator) if p.strip()]
            unknown = [p for p in parts if _key(p) not in spellings]
            if unknown:
                raise ValueError(f"clinical field '{self.name}' (column {self.column}) has unknown value"
                                 f"{shown(unknown[0])}")
            return _non_empty(self.name, sorted({spellings[_key(p)] for p in parts}))
        if self.multiple and self.multiple["separator"] in text:
            parts = {spellings.get(_key(p)) for p in text.split(self.multiple["separator"]) if p.strip()}
            if None not in parts:
                return next(iter(parts)) if len(parts) == 1 else self.multiple["level"]
        if _key(text) not in spellings:
            raise ValueError(f"clinical field '{self.name}' (column {self.column}) has unknown value{shown(text)}")
        return spellings[_key(text)]

    def record(self) -> dict:
        """What the prepared cohort records of the field (the bundles encode from it)."""
        record = {"name": self.name, "group": self.group, "type": self.type}
        if self.type in ("category", "multi_hot"):
            record["levels"] = self.vocabulary()
        return record


def binary(name: str, value, column: str) -> int:
    """0 or 1 from a cell spelled 0/1, yes/no, positive/negative, ..."""
    text = cell(value)
    if text is None:
        raise ValueError(f"clinical field '{name}' (column {column}) is missing")
    if text.lower() in TRUE or text in ("1.0",):
        return 1
    if text.lower() in FALSE or text in ("0.0",):
        return 0
    raise ValueError(f"clinical field '{name}' (column {column}) must be 0 or 1, got{shown(text) or ' another value'}")


def _non_empty(name: str, levels: list[str]) -> list[str]:
    if not levels:
        raise ValueError(f"clinical field '{name}': no level marked (e.g. no therapeutic agent)")
    return levels


@dataclass(frozen=True)
class Schema:
    name: str
    id_column: str
    label_column: str
    fields: tuple[Field, ...]
    site_column: str | None = None
    zero_pad: int = 0
    table: str | None = None  # default clinical table, relative to the raw folder
    extra: dict[str, str] = field(default_factory=dict)  # datalist name -> column
    dicom: dict = field(default_factory=dict)

    def patient_id(self, value) -> str | None:
        text = cell(value)
        return text.zfill(self.zero_pad) if text and self.zero_pad and text.isdigit() else text

    def columns(self) -> list[str]:
        """Columns a table must have."""
        site = [self.site_column] if self.site_column else []
        return [self.id_column, self.label_column, *site] + [c for f in self.fields for c in f.source_columns()]

    def field_record(self) -> list[dict]:
        """Encoding order: clinical, subtype, then rhpc fields, each in schema order."""
        return [f.record() for group in GROUPS for f in self.fields if f.group == group]


def _field(name: str, spec: dict, where: str) -> Field:
    if not isinstance(spec, dict):
        raise SchemaError(f"{where}: field '{name}' must be a mapping")
    unknown = set(spec) - {"group", "type", "column", "columns", "levels", "separator", "optional", "multiple", "range"}
    if unknown:
        raise SchemaError(f"{where}: field '{name}' has unknown key(s) {', '.join(sorted(unknown))}")
    if spec.get("group") not in GROUPS or spec.get("type") not in TYPES:
        raise SchemaError(f"{where}: field '{name}' needs group in {GROUPS} and type in {TYPES}")
    if not spec.get("column") and not (spec["type"] == "multi_hot" and spec.get("columns")):
        raise SchemaError(f"{where}: field '{name}' needs a column")
    if spec["type"] in ("category", "multi_hot") and not (spec.get("levels") or spec.get("columns")):
        raise SchemaError(f"{where}: field '{name}' needs levels")
    if spec["type"] == "multi_hot" and spec.get("column") and not spec.get("separator"):
        raise SchemaError(f"{where}: field '{name}' needs a separator to split column {spec['column']}")
    multiple = spec.get("multiple")
    if multiple is not None and (not isinstance(multiple, dict) or set(multiple) != {"separator", "level"}):
        raise SchemaError(f"{where}: field '{name}': multiple needs exactly separator and level")
    levels = {str(k): tuple(str(s) for s in (v or ())) for k, v in (spec.get("levels") or {}).items()}
    if UNKNOWN in levels and not (spec["type"] == "category" and spec.get("optional")):
        raise SchemaError(f"{where}: field '{name}': an '{UNKNOWN}' level needs an optional category")
    if multiple and str(multiple["level"]) in levels:
        raise SchemaError(f"{where}: field '{name}': multiple.level '{multiple['level']}' is already a level")
    return Field(name, spec["group"], spec["type"], spec.get("column"),
                 {str(k): str(v) for k, v in (spec.get("columns") or {}).items()}, levels,
                 spec.get("separator"), bool(spec.get("optional", False)), multiple,
                 tuple(spec["range"]) if spec.get("range") else None)


def load_schema(path: Path | str) -> Schema:
    """Read and check a schema file; ``SchemaError`` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"schema not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SchemaError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    clinical = (spec or {}).get("clinical") if isinstance(spec, dict) else None
    if not isinstance(clinical, dict):
        raise SchemaError(f"{path}: needs a 'clinical' section")
    try:
        id_spec, label_spec = clinical["id"], clinical["label"]
        id_column, label_column = id_spec["column"], label_spec["column"]
        fields = tuple(_field(str(n), s, str(path)) for n, s in clinical["fields"].items())
    except (KeyError, TypeError, AttributeError) as err:
        raise SchemaError(f"{path}: clinical needs id.column, label.column and fields ({err})") from None
    if "age" not in {f.name for f in fields if f.type == "number"}:
        raise SchemaError(f"{path}: the bundles z-score age: fields need 'age' of type number")
    extra = {str(k): str(v) for k, v in (clinical.get("extra") or {}).items()}
    clash = sorted(set(extra) & {f.name for f in fields})
    if clash:
        raise SchemaError(f"{path}: extra name(s) {', '.join(clash)} are also fields")
    dicom = _dicom(spec.get("dicom") or {}, path)
    return Schema(str(spec.get("name") or path.stem), id_column, label_column, fields,
                  (clinical.get("site") or {}).get("column"), int(id_spec.get("zero_pad") or 0),
                  clinical.get("table"), extra, dicom)


def _dicom(spec: dict, path: Path) -> dict:
    """The ``dicom`` section with its pattern lists as tuples, every regular expression compiled."""
    spec = dict(spec)
    for key in ("series_include", "series_exclude"):
        value = spec.get(key) or ()
        spec[key] = (value,) if isinstance(value, str) else tuple(value)
    for key, value in spec.items():
        for pattern in (value if key.startswith("series_") else (value,) if key.endswith("_pattern") else ()):
            try:
                re.compile(str(pattern))
            except re.error as err:
                raise SchemaError(f"{path}: dicom {key}: not a regular expression ({err})") from None
    return spec


def preset(name: str) -> Schema:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise SchemaError(f"unknown preset '{name}' (presets: {names})")
    return load_schema(path)

