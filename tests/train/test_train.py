"""dcx-train: every architecture trains and round-trips; the CLI run folder, resume, Ctrl-C, skips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke
from dcx.train import trainer
from dcx.core.card import ModelCard
from dcx.core.checkpoint import build_model, load_checkpoint, save_checkpoint
from dcx.train.data import read_samples
from dcx.core.metrics import operating_point
from dcx.core.models import create_model
from dcx.core.registry import list_models
from dcx.train.train_cli import main
from test_data import write_png

FAST = ["--arch", "resnet18", "--weights", "none", "--img-size", 32, "--workers", 0, "--seed", 0]


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_trains_a_step_saves_and_loads(arch, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, 3, weights="none")
    images, targets = torch.rand(2, 1, 64, 64), torch.tensor([0, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loss = trainer.train_step(model, images, targets, optimizer, torch.nn.CrossEntropyLoss(),
                              torch.amp.GradScaler("cuda", enabled=False), None)
    assert np.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    card = ModelCard(arch=arch, classes=["covid", "normal", "pneumonia"], positive="covid", input_size=64)
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), card)
    loaded_card, state, _ = load_checkpoint(tmp_path / "m.pt")
    again = create_model(loaded_card.arch, len(loaded_card.classes), weights="none")
    again.load_state_dict(state)
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(images), model(images))


def small_archive(root: Path, *, broken: bool = False) -> Path:
    """3 classes with a fixed split (8 train / 2 val / 1 test each); optionally a corrupt train file."""
    rows = ["path,label,split"]
    for label in ("covid", "normal", "pneumonia"):
        for i in range(11):
            write_png(root / label / f"{i}.png", seed=i + 100 * len(label))
            rows.append(f"{label}/{i}.png,{label},{'train' if i < 8 else 'val' if i < 10 else 'test'}")
    if broken:
        (root / "covid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        rows.append("covid/broken.png,covid,train")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cli_run_folder_card_and_threshold(trained_run):
    """The conftest run: dcx-synth archive, resnet18 at 64 px, 3 epochs."""
    for name in ("best.pt", "last.pt", "card.json", "history.jsonl", "train.log",
                 "splits/train.csv", "splits/val.csv", "splits/test.csv"):
        assert (trained_run / name).is_file(), name
    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]

    card, state, resume = load_checkpoint(trained_run / "best.pt")
    assert resume is None and card.positive == "covid" and card.input_size == 64
    assert json.loads(json.dumps(card.to_dict())) == json.loads((trained_run / "card.json").read_text())
    v = card.metrics["validation"]
    assert v["auc"] == max(h["val_auc"] for h in history) and v["epoch"] == card.training["best_epoch"]
    assert v["auc"] >= 0.95, f"validation AUC {v['auc']:.3f} on the synthetic archive"
    assert card.threshold_policy == "sensitivity >= 0.98 on validation" and v["sensitivity"] >= 0.98
    assert card.data_fingerprint.startswith("sha256:")

    splits = {name: read_samples(trained_run / "splits" / f"{name}.csv") for name in ("train", "val", "test")}
    patients = [{s.patient_id for s in part} for part in splits.values()]
    assert all(None not in p for p in patients)
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    t = card.training
    assert Path(t["splits_dir"]).is_absolute() and Path(t["splits_dir"], "train.csv").is_file()
    assert t["split_sizes"] == {name: len(part) for name, part in splits.items()}
    assert t["imbalance"]["method"].startswith("class-weighted") and t["augmentation"]["hflip"] is False
    assert (t["epochs"], t["weights"], t["freeze_backbone"], t["seed"]) == (3, "none", False, 0)

    # The threshold is the one the card claims: recompute validation probabilities with the weights.
    model = build_model(card, state)  # with the OOD score's buffers that dcx-train fitted
    model.eval()
    from dcx.train.presets import EvalPreset
    from dcx.core.reader import read_unit_gray

    preset = EvalPreset(size=card.input_size)
    with torch.no_grad():
        x = torch.stack([preset(read_unit_gray(s.path)) for s in splits["val"]])
        p = torch.softmax(model(x), dim=1)[:, card.positive_index].numpy()
    y = np.array([s.label == card.positive for s in splits["val"]])
    assert operating_point(y, p, card.threshold)["sensitivity"] == pytest.approx(v["sensitivity"])


def test_ctrl_c_saves_and_resume_continues_with_the_next_batch(tmp_path, monkeypatch):
    data, run = small_archive(tmp_path / "data"), tmp_path / "run"
    real_step, calls = trainer.train_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", interrupted_step)
    args = ["--data", data, "--out", run, "--epochs", 2, "--batch-size", 4, *FAST]
    result = invoke(main, args, expect_exit=130)
    assert "interrupted in epoch 1/2 after 2 batch(es)" in result.output and "--resume" in result.output
    _, _, state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["batches_done"]) == (0, 2)
    assert not (run / "best.pt").exists() and "interrupted in epoch 1/2" in (run / "train.log").read_text()

    invoke(main, args, expect_exit=1)  # a run is there: refuses to overwrite it silently
    calls.clear()
    monkeypatch.setattr(trainer, "train_step", lambda *a: calls.append(1) or real_step(*a))
    result = invoke(main, ["--out", run, "--resume", "--workers", 0])
    assert len(calls) == 2 * (24 // 4) - 2  # exactly the batches not yet done
    assert "resuming" in result.output and "best.pt: resnet18, val AUC" in result.output
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    card, _, _ = load_checkpoint(run / "best.pt")
    _, _, state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["batches_done"]) == (2, 0)
    assert card.threshold_policy.startswith("sensitivity") and card.training["best_epoch"] in (1, 2)


def test_corrupt_training_image_is_reported_by_name_and_skipped(tmp_path):
    data, run = small_archive(tmp_path / "data", broken=True), tmp_path / "run"
    result = invoke(main, ["--data", data, "--out", run, "--epochs", 1, "--batch-size", 5, *FAST])
    assert "skipped unreadable image" in result.output and "broken.png" in result.output
    assert "broken.png" in (run / "train.log").read_text()
    card, _, _ = load_checkpoint(run / "best.pt")
    assert card.training["unreadable_images"] == 1 and card.training["split_sizes"]["train"] == 25


def test_force_starts_over_and_youden_policy_is_recorded(tmp_path):
    data, run = small_archive(tmp_path / "data"), tmp_path / "run"
    args = ["--data", data, "--out", run, "--epochs", 1, "--batch-size", 8, *FAST]
    invoke(main, args)
    refused = invoke(main, args, expect_exit=1)
    assert "already holds a run" in refused.output and "--force" in refused.output
    invoke(main, [*args, "--force", "--threshold-policy", "youden"])
    card, _, _ = load_checkpoint(run / "best.pt")
    assert card.threshold_policy == "youden on validation"
    assert len((run / "history.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--positive", "tuberculosis"], "--positive tuberculosis is not a class"),
    (["--epochs", 0], "--epochs and --batch-size must be at least 1"),
    (["--weights", "nowhere.pt"], "weights file not found: nowhere.pt"),
    (["--device", "cuda"], "no CUDA device") if not torch.cuda.is_available() else (["--lr", -1], "--lr positive"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, extra, message):
    data = small_archive(tmp_path / "data")
    result = invoke(main, ["--data", data, "--out", tmp_path / "run", *FAST, *extra], expect_exit=1)
    assert message in result.output and "Traceback" not in result.output


def test_missing_data_and_missing_resume_state_are_errors(tmp_path):
    assert "--data is required" in invoke(main, ["--out", tmp_path / "r"], expect_exit=1).output
    assert "checkpoint not found" in invoke(main, ["--out", tmp_path / "r", "--resume"], expect_exit=1).output


@pytest.mark.gpu
def test_cuda_training_uses_mixed_precision_and_saves_portable_weights(tmp_path):
    data, run = small_archive(tmp_path / "data"), tmp_path / "run"
    invoke(main, ["--data", data, "--out", run, "--epochs", 2, "--batch-size", 4, *FAST, "--device", "cuda"])
    card, state, _ = load_checkpoint(run / "best.pt")
    assert card.training["precision"] in ("bfloat16", "float16")
    assert all(t.device.type == "cpu" for t in state.values())
    model = build_model(card, state)  # with the OOD score's buffers that dcx-train fitted


def test_best_epoch_is_highest_val_auc_then_lowest_val_loss(trained_run):
    import json

    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]
    card = json.loads((trained_run / "card.json").read_text())
    best = max(history, key=lambda h: (h["val_auc"], -h["val_loss"]))
    assert card["training"]["best_epoch"] == best["epoch"]
