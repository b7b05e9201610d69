"""Training data: sources, splits, unreadable files, fingerprints and the train/eval presets."""
from __future__ import annotations

import shutil
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcx.train.data import Sample, check_trainable, data_fingerprint, read_samples, split_samples, write_manifest
from dcx.train.loading import EpochSampler, ImageDataset, Unreadable, collate_skipping
from dcx.core.errors import DcxError
from dcx.core.preprocess import Preprocess
from dcx.core.reader import read_unit_gray
from dcx.train.presets import EvalPreset, TrainPreset


def write_png(path: Path, seed: int, size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def class_folders(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        for i in range(n):
            write_png(root / label / f"{label}-{i:02d}.png", seed=zlib.crc32(f"{label}{i}".encode()))
    return root


def many_samples(per_class: dict[str, int], patients_per_class: int | None = None) -> list[Sample]:
    """Samples (no files needed for splitting); with patient ids, several films per patient."""
    out = []
    for label, n in per_class.items():
        for i in range(n):
            patient = f"{label}-p{i % patients_per_class}" if patients_per_class else None
            out.append(Sample(Path(f"/archive/{label}/{i:03d}.png"), label, None, patient))
    return out


# -- sources ---------------------------------------------------------------------------------
def test_class_folders_are_read_sorted_with_nested_files_and_without_hidden_ones(tmp_path):
    root = class_folders(tmp_path / "data", {"normal": 3, "covid": 2})
    write_png(root / "covid" / "follow-up" / "c.png", seed=9)
    write_png(root / "covid" / ".hidden.png", seed=10)
    (root / ".cache").mkdir()
    samples = read_samples(root)
    assert [s.label for s in samples] == ["covid"] * 3 + ["normal"] * 3
    assert [s.path for s in samples] == sorted(s.path for s in samples)
    assert all(s.path.is_absolute() and s.path.is_file() for s in samples)
    assert not any(".hidden" in str(s.path) for s in samples)
    assert all(s.split is None and s.patient_id is None for s in samples)


def test_csv_manifest_resolves_relative_paths_and_ignores_extra_columns(tmp_path):
    root = class_folders(tmp_path / "data", {"covid": 2, "normal": 2})
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,split,patient_id,age\n"
                        "../data/covid/covid-00.png,covid,train,P1,40\n"
                        "../data/covid/covid-01.png,covid,,P2,41\n"
                        f"{root / 'normal/normal-00.png'},normal,val,,50\n"
                        "../data/normal/normal-01.png,normal,test,P4,\n")
    samples = read_samples(manifest)
    assert [(s.path.name, s.label, s.split, s.patient_id) for s in samples] == [
        ("covid-00.png", "covid", "train", "P1"), ("covid-01.png", "covid", None, "P2"),
        ("normal-00.png", "normal", "val", None), ("normal-01.png", "normal", "test", "P4")]
    assert all(s.path.is_file() for s in samples)


def test_a_folder_with_manifest_csv_is_read_through_it(tmp_path):
    root = class_folders(tmp_path, {"covid": 2, "normal": 2})
    write_png(tmp_path / "masks" / "m.png", seed=1)  # not a class: the manifest says what is
    (tmp_path / "manifest.csv").write_text("relpath,label,patient_id\ncovid/covid-00.png,covid,P1\n"
                                           "normal/normal-00.png,normal,P2\n")
    samples = read_samples(root)
    assert [(s.path.name, s.patient_id) for s in samples] == [("covid-00.png", "P1"), ("normal-00.png", "P2")]


@pytest.mark.parametrize("body, message", [
    ("file,label\na.png,covid\n", "needs the columns path,label"),
    ("path,label\na.png,covid\nb.png,covid\nc.png,normal\n", "3 missing file(s): a.png, b.png, c.png"),
    ("path,label,split\nx.png,covid,training\n", "split 'training' is not one of train, val, test"),
    ("path,label\nx.png,\n", "line 2: empty label"),
    ("path,label\n", "no images"),
])
def test_manifest_mistakes_are_named(tmp_path, body, message):
    write_png(tmp_path / "x.png", seed=0)
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(DcxError) as err:
        read_samples(tmp_path / "m.csv")
    assert message in err.value.message


def test_duplicate_rows_and_missing_sources_are_errors(tmp_path):
    write_png(tmp_path / "x.png", seed=0)
    (tmp_path / "m.csv").write_text("path,label\nx.png,covid\n./x.png,normal\n")
    with pytest.raises(DcxError, match="listed twice"):
        read_samples(tmp_path / "m.csv")
    with pytest.raises(DcxError, match="data not found"):
        read_samples(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png", seed=1)
    with pytest.raises(DcxError, match="no class folders"):
        read_samples(tmp_path / "flat")


def test_training_needs_two_classes_of_two_images(tmp_path):
    with pytest.raises(DcxError, match="one class only"):
        check_trainable(many_samples({"covid": 5}), "src")
    with pytest.raises(DcxError, match="pneumonia have fewer than 2 images"):
        check_trainable(many_samples({"covid": 5, "normal": 5, "pneumonia": 1}), "src")
    check_trainable(many_samples({"covid": 2, "normal": 2}), "src")


# -- splits ----------------------------------------------------------------------------------
def test_split_is_stratified_and_covers_every_sample_once():
    samples = many_samples({"covid": 40, "normal": 100, "pneumonia": 60})
    splits = split_samples(samples, val_fraction=0.15, test_fraction=0.15, seed=3)
    assert sorted(s.path for part in splits.values() for s in part) == sorted(s.path for s in samples)
    for name, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = Counter(s.label for s in splits[name])
        assert all(s.split == name for s in splits[name])
        for label, total in (("covid", 40), ("normal", 100), ("pneumonia", 60)):
            assert abs(counts[label] - fraction * total) <= 1, (name, label, counts)


def test_split_keeps_each_patient_in_one_split():
    samples = many_samples({"covid": 60, "normal": 60}, patients_per_class=20)  # 3 films per patient
    splits = split_samples(samples, seed=0)
    where = {}
    for name, part in splits.items():
        for s in part:
            assert where.setdefault(s.patient_id, name) == name, f"{s.patient_id} in {where[s.patient_id]} and {name}"
    assert all(Counter(s.label for s in splits[name]).keys() == {"covid", "normal"} for name in splits)


def test_split_is_reproducible_for_a_seed_and_changes_with_it():
    samples = many_samples({"covid": 30, "normal": 30})
    first, again = split_samples(samples, seed=7), split_samples(list(reversed(samples)), seed=7)
    assert first == again
    assert split_samples(samples, seed=8)["val"] != first["val"]


def test_a_manifest_split_column_is_respected_and_pulls_its_patient_along():
    samples = many_samples({"covid": 20, "normal": 20}, patients_per_class=10)
    samples[0] = Sample(samples[0].path, "covid", "test", samples[0].patient_id)  # patient covid-p0
    samples[1] = Sample(samples[1].path, "covid", "val", samples[1].patient_id)   # patient covid-p1
    splits = split_samples(samples, seed=0)
    assert {s.path for s in splits["test"] if s.patient_id == "covid-p0"} == \
        {s.path for s in samples if s.patient_id == "covid-p0"}
    assert all(s.split == "val" for s in splits["val"]) and any(s.patient_id == "covid-p1" for s in splits["val"])
    samples[2] = Sample(samples[2].path, "covid", "train", "covid-p0")
    with pytest.raises(DcxError, match="one patient, one split"):
        split_samples(samples, seed=0)


def test_split_manifest_round_trips_through_read_samples(tmp_path):
    root = class_folders(tmp_path / "data", {"covid": 5, "normal": 5})
    splits = split_samples(read_samples(root), seed=0)
    for name, part in splits.items():
        write_manifest(part, tmp_path / "splits" / f"{name}.csv")
        assert read_samples(tmp_path / "splits" / f"{name}.csv") == part


# -- fingerprint -----------------------------------------------------------------------------
def test_fingerprint_follows_content_not_location(tmp_path):
    root = class_folders(tmp_path / "a", {"covid": 2, "normal": 2})
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere" / "b"))
    print_a, print_b = data_fingerprint(read_samples(root)), data_fingerprint(read_samples(moved))
    assert print_a == print_b and print_a.startswith("sha256:")
    relabelled = [Sample(s.path, "normal" if s.label == "covid" else "covid") for s in read_samples(moved)]
    assert data_fingerprint(relabelled) != print_a
    write_png(moved / "covid" / "covid-00.png", seed=1, size=(80, 64))
    assert data_fingerprint(read_samples(moved)) != print_a


# -- unreadable images -----------------------------------------------------------------------
def corrupt_archive(tmp_path) -> tuple[Path, Path]:
    root = class_folders(tmp_path / "data", {"covid": 3, "normal": 3})
    bad = root / "covid" / "broken.png"
    bad.write_bytes((root / "covid" / "covid-00.png").read_bytes()[:60])  # PNG header, truncated body
    return root, bad


def test_an_unreadable_image_is_reported_by_name_not_raised(tmp_path):
    root, bad = corrupt_archive(tmp_path)
    samples = read_samples(root)
    dataset = ImageDataset(samples, ["covid", "normal"], EvalPreset(size=32))
    items = [dataset[i] for i in range(len(dataset))]
    broken = [item for item in items if isinstance(item, Unreadable)]
    assert len(broken) == 1 and samples[broken[0].index].path == bad and "broken.png" in broken[0].reason
    images, targets, skipped = collate_skipping(items)
    assert images.shape == (6, 1, 32, 32) and targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert skipped == broken


def test_unreadable_images_are_skipped_inside_loader_workers(tmp_path):
    root, bad = corrupt_archive(tmp_path)
    samples = read_samples(root)
    loader = torch.utils.data.DataLoader(ImageDataset(samples, ["covid", "normal"], TrainPreset(size=32)),
                                         batch_size=4, num_workers=1, collate_fn=collate_skipping)
    seen, skipped = 0, []
    for images, targets, unreadable in loader:
        assert images.shape[1:] == (1, 32, 32) and len(images) == len(targets)
        seen += len(targets)
        skipped += [samples[u.index].path for u in unreadable]
    assert seen == len(samples) - 1 and skipped == [bad]


def test_dataset_reads_with_the_reference_reader(tmp_path):
    path = write_png(tmp_path / "covid" / "a.png", seed=4, size=(50, 30))
    image, target = ImageDataset([Sample(path, "covid")], ["normal", "covid"], EvalPreset(size=24))[0]
    assert target == 1 and torch.equal(image, Preprocess(24)(read_unit_gray(path)))
    assert ImageDataset([Sample(path, "other")], ["normal", "covid"], EvalPreset(size=24))[0][1] == -1


# -- presets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(30, 50), (64, 40), (33, 33)])
def test_presets_give_one_channel_float_squares(shape):
    unit_gray = np.random.default_rng(0).random(shape, dtype=np.float32)
    for preset in (TrainPreset(size=48), EvalPreset(size=48)):
        out = preset(unit_gray)
        assert out.shape == (1, 48, 48) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_eval_preset_is_the_preprocessing_contract_and_train_preset_reduces_to_it():
    unit_gray = np.random.default_rng(1).random((40, 60), dtype=np.float32)
    contract = Preprocess(32)(unit_gray)
    assert torch.equal(EvalPreset(size=32)(unit_gray), contract)
    still = TrainPreset(size=32, scale=(1.0, 1.0), aspect_jitter=0.0, rotation=0.0, brightness=0.0, contrast=0.0)
    torch.testing.assert_close(still(unit_gray), contract, atol=1e-5, rtol=0)


def test_train_preset_varies_and_never_flips_by_default():
    # Bright left half: a flip would move the mass to the right; mild crops and tilts cannot.
    unit_gray = np.zeros((64, 64), dtype=np.float32)
    unit_gray[:, :32] = 0.8
    preset = TrainPreset(size=64)
    torch.manual_seed(0)
    outs = [preset(unit_gray) for _ in range(20)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert all(o[..., :32].sum() > 3 * o[..., 32:].sum() for o in outs)
    flipping = TrainPreset(size=64, hflip=True)
    assert any(o[..., 32:].sum() > o[..., :32].sum() for o in (flipping(unit_gray) for _ in range(20)))


def test_augmentation_depends_on_seed_epoch_and_index_not_on_loader_workers(tmp_path):
    samples = read_samples(class_folders(tmp_path / "data", {"covid": 3, "normal": 3}))
    dataset = ImageDataset(samples, ["covid", "normal"], TrainPreset(size=32))

    def epoch_batches(workers: int, epoch: int, skip: int = 0):
        sampler = EpochSampler(len(samples), seed=5)
        sampler.set_epoch(epoch, skip=skip)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers,
                                             collate_fn=collate_skipping)
        return [images for images, _, _ in loader]

    in_process = epoch_batches(0, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(in_process, epoch_batches(2, epoch=1), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(in_process[1:], epoch_batches(0, epoch=1, skip=2), strict=True))
    assert not torch.equal(torch.cat(in_process), torch.cat(epoch_batches(0, epoch=2)))


# --------------------------------------------------------------------------- non-regular files

HANG_GUARD = 120  # seconds: before the fix, these calls waited forever on the FIFO


def _finishes(fn):
    """fn() in a daemon thread: its result, or a test failure instead of a hung suite."""
    import threading

    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"still blocked after {HANG_GUARD} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_fifo_and_broken_link_in_class_folders_are_reported_and_skipped(tmp_path):
    import os

    root = class_folders(tmp_path / "data", {"covid": 3, "normal": 3})
    os.mkfifo(root / "covid" / "pipe.png")
    (root / "normal" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    samples = read_samples(root)
    assert data_fingerprint(samples).startswith("sha256:")
    dataset = ImageDataset(samples, ["covid", "normal"], EvalPreset(size=32))
    items = _finishes(lambda: [dataset[i] for i in range(len(dataset))])
    reasons = sorted(item.reason for item in items if isinstance(item, Unreadable))
    assert len(reasons) == 2
    assert reasons[0].endswith("pipe.png: not a regular file")
    assert reasons[1].endswith("dangling.png: broken symbolic link")


def test_manifest_naming_a_fifo_is_an_error_that_says_so(tmp_path):
    import os

    root = class_folders(tmp_path / "data", {"covid": 2, "normal": 2})
    os.mkfifo(root / "pipe.png")
    (root / "m.csv").write_text("path,label\ncovid/covid-00.png,covid\npipe.png,normal\n")
    with pytest.raises(DcxError, match=r"pipe.png \(not a regular file\)"):
        read_samples(root / "m.csv")


def test_reference_reader_refuses_a_fifo_at_once(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(DcxError, match="not a regular file"):
        _finishes(lambda: read_unit_gray(tmp_path / "pipe.png"))


def test_dcx_eval_with_a_fifo_in_its_data_finishes(trained_checkpoint, tmp_path):
    import os

    from click.testing import CliRunner

    from dcx.train.eval_cli import main

    root = class_folders(tmp_path / "data", {"covid": 3, "normal": 3, "pneumonia": 3})
    os.mkfifo(root / "covid" / "pipe.png")
    args = [str(trained_checkpoint), "--data", str(root), "--out", str(tmp_path / "eval"), "--workers", "0"]
    result = _finishes(lambda: CliRunner().invoke(main, args))
    assert result.exit_code == 0, result.output
    assert "pipe.png" in result.output
