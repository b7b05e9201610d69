"""Training data: which images, which label, which split (reading them: :mod:`dcx.train.loading`).

Sources
    A CSV manifest ``path,label[,split][,patient_id]`` (extra columns ignored; ``relpath`` is
    accepted for ``path``; relative paths resolve against the manifest's folder), or a folder
    of class folders (``DIR/<class>/**/<image>``). A folder holding ``manifest.csv`` at its
    root is read through that manifest, so ``dcx-synth`` output keeps its patient ids.

Splits
    Stratified by label, reproducible for a seed, and grouped by patient when patient ids are
    given, so no patient's films leak between train, validation and test. Rows that already
    carry a split keep it (and pull the rest of their patient along).

Listing is strict: a manifest naming a missing file is a mistake to fix, not to skip (an
unreadable image is skipped and reported when it is read). Nothing here needs PyTorch.
"""
from __future__ import annotations

import csv
import hashlib
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from dcx.core.errors import DcxError

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"
PATH_COLUMNS = ("path", "relpath")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str | None = None
    patient_id: str | None = None


def read_samples(source: str | os.PathLike) -> list[Sample]:
    """All samples of a manifest or class-folder tree, sorted by path."""
    source = Path(source)
    if source.is_dir():
        manifest = source / MANIFEST_NAME
        samples = _read_manifest(manifest) if manifest.is_file() else _read_class_folders(source)
    elif source.is_file():
        samples = _read_manifest(source)
    else:
        raise DcxError(f"data not found: {source}")
    if not samples:
        raise DcxError(f"no images in {source}")
    return sorted(samples, key=lambda s: str(s.path))


def _read_manifest(manifest: Path) -> list[Sample]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DcxError(f"cannot read manifest {manifest}: {exc}") from exc
    path_column = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_column is None or "label" not in columns:
        raise DcxError(f"{manifest} needs the columns path,label[,split][,patient_id]; it has {','.join(columns) or 'none'}")
    root = manifest.absolute().parent
    samples, missing, seen = [], [], set()
    for line, raw in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not row[path_column] or not row["label"]:
            raise DcxError(f"{manifest} line {line}: empty {path_column if not row[path_column] else 'label'}")
        path = Path(os.path.normpath(root / row[path_column]))  # absolute; symlinks kept as named
        if path in seen:
            raise DcxError(f"{manifest} line {line}: {row[path_column]} is listed twice")
        seen.add(path)
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise DcxError(f"{manifest} line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if not path.is_file():
            missing.append(row[path_column] + (" (not a regular file)" if path.exists() else ""))
        samples.append(Sample(path, row["label"], split, row.get("patient_id") or None))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DcxError(f"{manifest} lists {len(missing)} missing file(s): {', '.join(missing[:5])}{more}")
    return samples


def _read_class_folders(root: Path) -> list[Sample]:
    root = root.absolute()
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DcxError(f"no class folders in {root}: expected {root}/<class>/<images> or a CSV manifest")
    samples = []
    for folder in classes:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            samples += [Sample(Path(dirpath) / f, folder.name) for f in filenames if not f.startswith(".")]
    return samples


def check_trainable(samples: list[Sample], source) -> None:
    """Training needs two classes with two images each (a split manifest or a test set need not)."""
    counts = Counter(s.label for s in samples)
    if len(counts) < 2:
        raise DcxError(f"{source} has one class only ({next(iter(counts))}); a classifier needs at least two")
    small = sorted(label for label, n in counts.items() if n < 2)
    if small:
        raise DcxError(f"{source}: class(es) {', '.join(small)} have fewer than 2 images")


def split_samples(samples: list[Sample], *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> dict[str, list[Sample]]:
    """Stratified, patient-grouped, reproducible train/val/test split; each sample gets its split.

    A patient (or, without ids, each image) is one indivisible group. Groups are dealt per label
    stratum, largest first in a seeded shuffle, to whichever split is furthest below its target
    image count, so small classes still land in proportion.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DcxError(f"validation ({val_fraction}) and test ({test_fraction}) fractions must be in [0, 1) and sum below 1")
    groups = _patient_groups(samples)
    assigned: dict[str, str] = {}
    strata: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        given = {s.split for s in members if s.split}
        if len(given) > 1:
            raise DcxError(f"patient {key} appears in splits {', '.join(sorted(given))}; one patient, one split")
        if given:
            assigned[key] = given.pop()
        else:
            strata[_majority_label(members)].append(key)

    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    for label in sorted(strata):
        keys = _dealing_order(strata[label], groups, f"{seed}:{label}")
        total = sum(len(groups[k]) for k in keys)
        filled = dict.fromkeys(SPLITS, 0)
        for key in keys:
            split = max(SPLITS, key=lambda sp: fractions[sp] * total - filled[sp])
            assigned[key] = split
            filled[split] += len(groups[key])

    out: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for key, members in groups.items():
        out[assigned[key]] += [replace(s, split=assigned[key]) for s in members]
    return {split: sorted(members, key=lambda s: str(s.path)) for split, members in out.items()}


def assign_folds(samples: list[Sample], k: int, *, seed: int = 0) -> list[list[Sample]]:
    """``k`` stratified, patient-grouped folds for cross-validation, dealt like the splits:
    per label stratum, largest group first, to the fold with the fewest images of that label
    (ties: the fewest images overall)."""
    if k < 2:
        raise DcxError(f"--folds needs at least 2 folds, got {k}")
    groups = _patient_groups(samples)
    if len(groups) < k:
        raise DcxError(f"{k} folds need at least {k} patients (or images without patient ids); there are {len(groups)}")
    strata: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        strata[_majority_label(members)].append(key)
    folds: list[list[Sample]] = [[] for _ in range(k)]
    for label in sorted(strata):
        in_stratum = [0] * k
        for key in _dealing_order(strata[label], groups, f"{seed}:{label}"):
            fold = min(range(k), key=lambda f: (in_stratum[f], len(folds[f]), f))
            in_stratum[fold] += len(groups[key])
            folds[fold] += groups[key]
    return [sorted(fold, key=lambda s: str(s.path)) for fold in folds]


def _patient_groups(samples: list[Sample]) -> dict[str, list[Sample]]:
    """A patient (or, without an id, each image) is one indivisible group."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.patient_id if s.patient_id is not None else f"\0{s.path}"].append(s)
    return groups


def _majority_label(members: list[Sample]) -> str:
    labels = Counter(s.label for s in members)
    return min(labels, key=lambda label: (-labels[label], label))


def _dealing_order(keys: list[str], groups: dict[str, list[Sample]], seed: str) -> list[str]:
    """Largest groups first, in a seeded shuffle within equal sizes."""
    keys = sorted(keys)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -len(groups[k]))  # stable: shuffled order within equal sizes
    return keys


def write_manifest(samples: list[Sample], path: str | os.PathLike) -> Path:
    """A manifest :func:`read_samples` reads back (absolute paths, so it works from anywhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "patient_id"])
        for s in samples:
            writer.writerow([str(s.path), s.label, s.split or "", s.patient_id or ""])
    return path


def class_counts(samples: list[Sample], classes: list[str]) -> dict[str, int]:
    counts = Counter(s.label for s in samples)
    return {c: counts.get(c, 0) for c in classes}


def data_fingerprint(samples: list[Sample]) -> str:
    """sha256 over sorted (path relative to the common root, size, label): same data, same print,
    wherever the archive is mounted."""
    root = os.path.commonpath([str(s.path.parent) for s in samples])
    h = hashlib.sha256()
    for rel, size, label in sorted((os.path.relpath(s.path, root), _size(s.path), s.label) for s in samples):
        h.update(f"{rel}\t{size}\t{label}\n".encode())
    return "sha256:" + h.hexdigest()


def _size(path: Path) -> int:
    """-1 for a file that cannot be stat'ed (a broken symbolic link): training skips it later."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def inverse_frequency_weights(counts: dict[str, int]) -> dict[str, float]:
    """n / (K * n_k): each class contributes equally to the loss, whatever its size."""
    total, k = sum(counts.values()), len(counts)
    return {c: (total / (k * n) if n else 0.0) for c, n in counts.items()}
