"""What the classifier learns from: hard labels (one class per row) or crowd vote fractions (soft labels).

A label specification names the classes and where each comes from, in one small syntax shared by ``--classes``
and ``--soft-labels``: a comma-separated list of ``NAME`` or ``NAME=A+B+...``.

- hard labels (``--label morph_class [--classes elliptical,spiral=spiral_cw+spiral_acw]``): the items are values of
  the label column; ``NAME=A+B`` merges values A and B into one class NAME; rows whose value is not listed (or is
  null) are not used.  Without ``--classes`` every value seen is a class.
- soft labels (``--soft-labels elliptical=p_el,spiral=p_cw+p_acw,p_edge``): the items are numeric columns of vote
  fractions; ``NAME=A+B`` adds the fractions of columns A and B.  Each row's fractions are renormalised to sum to 1
  (a subset of the answers need not); rows with no votes (all null/NaN, or all zero) are not used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData, UsageProblem

HARD = "hard"
SOFT = "soft"


@dataclass(frozen=True)
class LabelSpec:
    """Which classes, and where they come from."""

    kind: str                                   # HARD or SOFT
    column: str | None                          # HARD: the label column
    classes: tuple[str, ...] | None             # class names in output order (None: HARD, every value seen)
    sources: dict[str, tuple[str, ...]] | None  # class -> label values (HARD) or vote columns (SOFT)

    @property
    def columns(self) -> list[str]:
        """The table columns this specification reads."""
        if self.kind == HARD:
            return [self.column]
        return list(dict.fromkeys(c for name in self.classes for c in self.sources[name]))

    def with_classes(self, classes: list[str]) -> "LabelSpec":
        """A HARD specification with the classes found in the data filled in (each class its own value)."""
        return LabelSpec(HARD, self.column, tuple(classes), {c: (c,) for c in classes})

    def to_json(self) -> dict:
        return {"kind": self.kind, "column": self.column, "classes": list(self.classes or []),
                "sources": {k: list(v) for k, v in (self.sources or {}).items()}}

    @classmethod
    def from_json(cls, data: dict) -> "LabelSpec":
        return cls(data["kind"], data.get("column"), tuple(data["classes"]),
                   {k: tuple(v) for k, v in data["sources"].items()})


def parse_class_list(text: str, option: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """'a,b=x+y,c' -> (('a', 'b', 'c'), {'a': ('a',), 'b': ('x', 'y'), 'c': ('c',)})."""
    classes, sources = [], {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, equals, members = item.partition("=")
        name = name.strip()
        parts = tuple(m.strip() for m in members.split("+")) if equals else (name,)
        if not name or not all(parts):
            raise UsageProblem(f"{option} item {item!r} is not NAME or NAME=A+B",
                               f"e.g. {option} elliptical,spiral=spiral_cw+spiral_acw")
        if name in sources:
            raise UsageProblem(f"{option} names class {name!r} twice")
        classes.append(name)
        sources[name] = parts
    if len(classes) < 2:
        raise UsageProblem(f"{option} needs at least two classes, got {text!r}",
                           f"e.g. {option} elliptical,spiral,edge_on")
    every = [value for name in classes for value in sources[name]]
    repeated = sorted({value for value in every if every.count(value) > 1})
    if repeated:
        raise UsageProblem(f"{option}: {', '.join(repeated)} belongs to more than one class")
    return tuple(classes), sources


def label_spec(label: str | None, soft_labels: str | None, classes: str | None) -> LabelSpec:
    """The specification from the command line's --label / --soft-labels / --classes."""
    if bool(label) == bool(soft_labels):
        raise UsageProblem("give either --label COLUMN (one class per row) or --soft-labels COL1,COL2,... "
                           "(vote fractions), not both or neither")
    if soft_labels:
        if classes:
            raise UsageProblem("--classes goes with --label; with --soft-labels name the classes there",
                               "e.g. --soft-labels elliptical=p_el,spiral=p_cw+p_acw")
        names, sources = parse_class_list(soft_labels, "--soft-labels")
        return LabelSpec(SOFT, None, names, sources)
    if classes:
        names, sources = parse_class_list(classes, "--classes")
        return LabelSpec(HARD, label, names, sources)
    return LabelSpec(HARD, label, None, None)


def check_label_columns(schema: pa.Schema, spec: LabelSpec, name: str) -> None:
    """BadData (65) naming a label column the table lacks, or a vote column that is not numeric."""
    for column in spec.columns:
        if column not in schema.names:
            option = "--label" if spec.kind == HARD else "--soft-labels"
            raise BadData(f"{name} has no '{column}' column (columns: {', '.join(schema.names)})",
                          f"name the label column(s) with {option}")
        field_type = schema.field(column).type
        if spec.kind == SOFT and not (pa.types.is_floating(field_type) or pa.types.is_integer(field_type)):
            raise BadData(f"{name}: vote column '{column}' is {field_type}, not numeric",
                          "--soft-labels takes columns of vote fractions (or counts)")


# --------------------------------------------------------------------------------------------------- hard labels

def label_strings(column) -> np.ndarray:
    """The values of a label column as an object array of strings (None where null): integers, booleans and
    strings alike, so that a class is named the same way when fitting and when evaluating."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_floating(column.type):   # NaN is no label; 1.0 is class "1"
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
    return np.array(column.cast(pa.string()).to_pylist(), dtype=object)


def natural_order(values) -> list[str]:
    """Class names sorted numerically when they are all numbers ('2' before '10'), else alphabetically."""
    values = sorted(set(values))
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def class_indices(values: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """Class index of each label string (-1: null, or a value no class takes)."""
    index_of = {value: i for i, name in enumerate(spec.classes) for value in spec.sources[name]}
    return np.array([index_of.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)


# --------------------------------------------------------------------------------------------------- soft labels

def vote_fractions(batch, spec: LabelSpec, name: str) -> np.ndarray:
    """(n, classes) summed vote columns of a batch, float64; NaN in a row where no column has a value.

    A null among other values counts as no votes for that answer.  Negative values are refused (BadData).
    """
    raw = {}
    for column in spec.columns:
        values = np.asarray(batch.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
        if np.any(values < 0):
            raise BadData(f"{name}: vote column '{column}' has negative values (e.g. {values[values < 0][0]:g})",
                          "--soft-labels takes vote fractions or counts, which are >= 0")
        if np.any(np.isinf(values)):
            raise BadData(f"{name}: vote column '{column}' has infinite values", "fix or drop those rows")
        raw[column] = values
    present = np.zeros(batch.num_rows, dtype=bool)
    for values in raw.values():
        present |= np.isfinite(values)
    votes = np.zeros((batch.num_rows, len(spec.classes)))
    for i, class_name in enumerate(spec.classes):
        for column in spec.sources[class_name]:
            votes[:, i] += np.nan_to_num(raw[column], nan=0.0)
    votes[~present] = np.nan
    return votes


def soft_targets(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets, used): the rows with votes renormalised to sum to 1, and the boolean mask of those rows.

    A row is used when it has a finite, positive total; its targets are votes / total."""
    total = votes.sum(axis=1)
    used = np.isfinite(total) & (total > 0)
    return (votes[used] / total[used, None]), used


def majority_vote(targets: np.ndarray) -> np.ndarray:
    """The class with the largest fraction (the first of equal ones)."""
    return np.argmax(targets, axis=1)
