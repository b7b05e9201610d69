"""The dcx-train loop: data -> splits -> epochs -> best checkpoint -> operating threshold.

A run folder holds everything needed to trust, continue or reproduce the run::

    best.pt         best validation AUC (ties: lower validation loss); its card carries the threshold
    last.pt         the latest state, with everything --resume needs
    splits/{train,val,test}.csv   the exact split (readable by read_samples / dcx-eval)
    history.jsonl   one line per epoch
    card.json       the best checkpoint's model card, for reading without torch
    train.log       what was printed, plus every skipped image by name

Design choices, recorded in the card's ``training`` dict:
- Class imbalance: class-weighted cross-entropy (n / (K * n_k)) rather than weighted sampling,
  so every epoch still sees every image once and resuming mid-epoch stays exact.
- Unreadable images: reported by name and skipped (see :mod:`dcx.train.data`).
- Ctrl-C: the state at the interrupted batch goes to last.pt; each epoch's order and every
  image's augmentation are functions of (seed, epoch, index) -- not of the worker count -- so
  --resume continues with the very next batch and the same images.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dcx.core import drift, metrics
from dcx.core.card import ModelCard
from dcx.core.checkpoint import load_checkpoint, save_checkpoint
from dcx.core.devices import torch_device
from dcx.core.errors import DcxError
from dcx.core.files import usable_cores, write_json
from dcx.core.models import create_model
from dcx.core.progress import Progress

from .config import TrainConfig, default_workers
from .data import (SPLITS, Sample, check_trainable, class_counts, data_fingerprint, inverse_frequency_weights,
                   read_samples, split_samples, write_manifest)
from .loading import EpochSampler, ImageDataset, collate_skipping
from .ood import fit_ood
from .presets import EvalPreset, TrainPreset

BEST, LAST, CARD, HISTORY, LOG, SPLITS_DIR = "best.pt", "last.pt", "card.json", "history.jsonl", "train.log", "splits"
RUN_ARTEFACTS = (BEST, LAST, CARD, HISTORY, LOG, SPLITS_DIR)


class TrainingInterrupted(Exception):
    """Ctrl-C during training; last.pt holds the state, the message (already logged) says how to resume."""


def train(config: TrainConfig, *, resume: bool = False, force: bool = False) -> Path:
    """Run (or continue) training; returns the path of best.pt with its threshold set."""
    run = Run.resume(config) if resume else Run.start(config, force=force)
    try:
        run.fit()
        return run.finalize()
    finally:
        run.close()


class RunLog:
    """One line to train.log and to stderr."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.file.flush()
        click.echo(message, err=True)

    def close(self) -> None:
        self.file.close()


def train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: nn.Module, scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None) -> float:
    """One optimisation step (autocast only when ``amp_dtype`` is set, i.e. on CUDA)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = loss_fn(model(images), targets)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None, loss_fn=None):
    """(softmax probabilities (N, K), targets (N,), mean loss, unreadable items) over ``loader``."""
    model.eval()
    probs, targets, bad, loss_sum = [], [], [], 0.0
    for images, y, unreadable in loader:
        bad += unreadable
        if len(y) == 0:
            continue
        images, y = images.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, y)) * len(y)
        probs.append(torch.softmax(logits, dim=1).cpu())
        targets.append(y.cpu())
    probs = torch.cat(probs).numpy() if probs else np.zeros((0, 0))
    targets = torch.cat(targets).numpy() if targets else np.zeros(0, dtype=np.int64)
    return probs, targets, loss_sum / max(len(targets), 1), bad


class Run:
    """One training run bound to its folder. Build with :meth:`start` or :meth:`resume`."""

    def __init__(self, config: TrainConfig, splits: dict[str, list[Sample]], card: ModelCard, state: dict | None):
        self.config, self.splits, self.card = config, splits, card
        self.out = Path(config.out)
        self.classes = card.classes
        self.positive_index = card.positive_index
        self.device = torch_device(config.device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        workers = default_workers() if config.workers is None else config.workers
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        else:
            torch.set_num_threads(usable_cores())  # loader workers run single-threaded (DataLoader's own rule)

        torch.manual_seed(config.seed)
        self.model = create_model(config.arch, len(self.classes), weights=config.weights)
        if config.freeze_backbone:
            self.model.freeze_backbone()
        self.model.to(self.device)

        counts = class_counts(splits["train"], self.classes)
        self.class_weights = inverse_frequency_weights(counts)
        self.loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([self.class_weights[c] for c in self.classes],
                                                               device=self.device))
        self.train_preset = TrainPreset(size=config.img_size)
        self.sampler = EpochSampler(len(splits["train"]), config.seed)
        loader_args = dict(batch_size=config.batch_size, num_workers=workers, persistent_workers=workers > 0,
                           pin_memory=cuda, collate_fn=collate_skipping)
        self.train_loader = DataLoader(ImageDataset(splits["train"], self.classes, self.train_preset),
                                       sampler=self.sampler, drop_last=len(splits["train"]) > config.batch_size,
                                       **loader_args)
        self.val_loader = DataLoader(ImageDataset(splits["val"], self.classes, EvalPreset(size=config.img_size)),
                                     **loader_args)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs * self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch, self.batches_done, self.loss_sum, self.loss_count = 0, 0, 0.0, 0
        self.history: list[dict] = []
        self.best_auc, self.best_epoch = -math.inf, 0
        self.unreadable: dict[str, str] = {}
        self.card.training.update(self._training_record(counts))
        self.log = RunLog(self.out / LOG)
        self.log(f"{config.arch} ({_describe_weights(config)}) on {self.device.type}"
                 f"{' ' + str(self.amp_dtype).removeprefix('torch.') if self.amp_dtype else ''}, "
                 f"{workers} loader workers; images train {len(splits['train'])} / val {len(splits['val'])} / "
                 f"test {len(splits['test'])}; classes {', '.join(self.classes)} (positive {card.positive})")
        if state is not None:
            self._load_state(state)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def start(cls, config: TrainConfig, *, force: bool = False) -> "Run":
        if config.lr is None:
            config = replace(config, lr=1e-3 if config.weights == "none" else 1e-4)
        _check_config(config)
        out = Path(config.out)
        checkpoints = [name for name in (BEST, LAST) if (out / name).exists()]
        if checkpoints and not force:
            raise DcxError(f"{out} already holds a run ({', '.join(checkpoints)}); "
                           "--resume continues it, --force starts over")
        for name in RUN_ARTEFACTS:  # a run without checkpoints has nothing worth keeping
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            elif (out / name).exists():
                (out / name).unlink()
        samples = read_samples(config.data)
        check_trainable(samples, config.data)
        classes = sorted({s.label for s in samples})
        if config.positive not in classes:
            raise DcxError(f"--positive {config.positive} is not a class of {config.data} (classes: {', '.join(classes)})")
        splits = split_samples(samples, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                               seed=config.seed)
        _check_validation(splits["val"], config.positive)
        out.mkdir(parents=True, exist_ok=True)
        for name, members in splits.items():
            write_manifest(members, out / SPLITS_DIR / f"{name}.csv")
        card = ModelCard(arch=config.arch, classes=classes, positive=config.positive, input_size=config.img_size,
                         data_fingerprint=data_fingerprint(samples),
                         training={"data": str(Path(config.data).resolve())})
        return cls(config, splits, card, None)

    @classmethod
    def resume(cls, config: TrainConfig) -> "Run":
        out = Path(config.out)
        card, state_dict, state = load_checkpoint(out / LAST)
        if state is None:
            raise DcxError(f"{out / LAST} holds no resume state")
        saved = TrainConfig(**state["config"])
        config = replace(saved, out=str(out), workers=config.workers, device=config.device)
        splits = {name: _read_split(out / SPLITS_DIR / f"{name}.csv") for name in SPLITS}
        return cls(config, splits, card, {**state, "state_dict": state_dict})

    def _training_record(self, counts: dict) -> dict:
        c = self.config
        return {
            "splits_dir": str((self.out / SPLITS_DIR).resolve()),
            "split_sizes": {name: len(members) for name, members in self.splits.items()},
            "class_counts": {name: class_counts(members, self.classes) for name, members in self.splits.items()},
            "imbalance": {"method": "class-weighted cross-entropy, n / (K * n_k) over the train split",
                          "class_weights": self.class_weights},
            "augmentation": self.train_preset.describe(),
            "epochs": c.epochs, "lr": c.lr, "batch_size": c.batch_size, "optimizer": "Adam",
            "lr_schedule": "cosine annealing per step to 0",
            "weights": c.weights, "freeze_backbone": c.freeze_backbone, "seed": c.seed,
            "val_fraction": c.val_fraction, "test_fraction": c.test_fraction,
            "precision": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "float32",
        }

    def _resume_state(self) -> dict:
        return {
            "config": asdict(self.config), "epoch": self.epoch, "batches_done": self.batches_done,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "history": self.history,
            "best_auc": self.best_auc, "best_epoch": self.best_epoch, "unreadable": self.unreadable,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
        }

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        for key in ("epoch", "batches_done", "loss_sum", "loss_count", "history", "best_auc", "best_epoch", "unreadable"):
            setattr(self, key, state[key])
        with open(self.out / HISTORY, "w", encoding="utf-8") as f:  # last.pt is the source of truth
            f.writelines(json.dumps(h) + "\n" for h in self.history)
        self.log(f"resuming {self.out} at epoch {self.epoch + 1}, batch {self.batches_done + 1}")

    # -- training ----------------------------------------------------------------------------
    def fit(self) -> None:
        try:
            while self.epoch < self.config.epochs:
                started = time.monotonic()
                train_loss = self._train_epoch()
                self._validate_and_save(train_loss, time.monotonic() - started)
        except KeyboardInterrupt:
            self._save_last()
            message = (f"interrupted in epoch {self.epoch + 1}/{self.config.epochs} after {self.batches_done} "
                       f"batch(es); state saved to {self.out / LAST}. Continue with: dcx-train --out {self.out} --resume")
            self.log(message)
            raise TrainingInterrupted(message) from None

    def _train_epoch(self) -> float:
        self.model.train()
        if self.config.freeze_backbone:
            self.model.features.eval()  # frozen layers keep their BatchNorm statistics too
        self.sampler.set_epoch(self.epoch, skip=self.batches_done * self.config.batch_size)
        label = f"dcx-train epoch {self.epoch + 1}/{self.config.epochs}"
        with Progress(label, total=len(self.train_loader) + self.batches_done, unit="batches") as progress:
            for images, targets, unreadable in self.train_loader:
                self._report_unreadable(self.train_loader.dataset, unreadable)
                if len(targets):
                    loss = train_step(self.model, images.to(self.device, non_blocking=True),
                                      targets.to(self.device, non_blocking=True), self.optimizer, self.loss_fn,
                                      self.scaler, self.amp_dtype)
                    self.loss_sum += loss * len(targets)
                    self.loss_count += len(targets)
                self.scheduler.step()
                self.batches_done += 1
                progress.update(self.batches_done, f"loss {self.loss_sum / max(self.loss_count, 1):.4f}")
        return self.loss_sum / max(self.loss_count, 1)

    def _validate_and_save(self, train_loss: float, seconds: float) -> None:
        probs, targets, val_loss, bad = predict(self.model, self.val_loader, self.device, self.amp_dtype, self.loss_fn)
        self._report_unreadable(self.val_loader.dataset, bad)
        y, p = targets == self.positive_index, probs[:, self.positive_index]
        auc = metrics.roc_auc(y, p)
        point = metrics.operating_point(y, p, 0.5)
        record = {"epoch": self.epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auc": auc,
                  "val_sensitivity": point["sensitivity"], "val_specificity": point["specificity"],
                  "lr": self.scheduler.get_last_lr()[0], "seconds": round(seconds, 1)}
        # Best = highest validation AUC; a tie (AUC saturates at 1.0 on easy data) goes to the lower
        # validation loss. nan never improves, but epoch 1 is always kept.
        best_loss = self.history[self.best_epoch - 1]["val_loss"] if self.best_epoch else math.inf
        improved = auc > self.best_auc or (auc == self.best_auc and val_loss < best_loss) or self.best_epoch == 0
        self.log(f"epoch {record['epoch']}/{self.config.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                 f"val AUC {auc:.4f}  sens {point['sensitivity']:.3f} spec {point['specificity']:.3f} @0.5  "
                 f"lr {record['lr']:.2e}  {seconds:.0f}s{'  *best*' if improved else ''}")
        if improved:
            self.card.metrics = {"validation": {"auc": auc, "epoch": record["epoch"]}}
            save_checkpoint(self.out / BEST, _cpu_state(self.model), self.card)
            self.best_auc, self.best_epoch = auc, record["epoch"]
        # The epoch is done: advance the in-memory state first, so a Ctrl-C from here on saves it as done.
        self.history.append(record)
        self.epoch, self.batches_done, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
        with open(self.out / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._save_last()

    def _save_last(self) -> None:
        save_checkpoint(self.out / LAST, _cpu_state(self.model), self.card, resume=self._resume_state())

    def _report_unreadable(self, dataset: ImageDataset, items) -> None:
        for item in items:
            path = str(dataset.samples[item.index].path)
            if path not in self.unreadable:
                self.unreadable[path] = item.reason
                self.log(f"skipped unreadable image: {item.reason}")

    # -- operating threshold -----------------------------------------------------------------
    def finalize(self) -> Path:
        """Choose the threshold on validation with the best weights, fit the OOD score on the
        training split (its threshold on validation); write both into best.pt and card.json."""
        c = self.config
        card, state_dict, _ = load_checkpoint(self.out / BEST)
        self.model.ood = None  # refitted below: a resumed, finished run finalizes again
        self.model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("ood.")})
        probs, targets, _, _ = predict(self.model, self.val_loader, self.device, self.amp_dtype)
        y, p = targets == self.positive_index, probs[:, self.positive_index]
        if not y.any():
            raise DcxError(f"no readable {card.positive} image in the validation split; see {self.out / LOG}")
        if c.threshold_policy == "youden":
            threshold, policy = metrics.threshold_youden(y, p), "youden on validation"
        else:
            threshold = metrics.threshold_for_sensitivity(y, p, c.target_sensitivity)
            policy = f"sensitivity >= {c.target_sensitivity:g} on validation"
        card.threshold, card.threshold_policy = threshold, policy
        card.metrics = {"validation": {"auc": metrics.roc_auc(y, p), "average_precision": metrics.average_precision(y, p),
                                       "epoch": self.best_epoch, "n": int(len(y)),
                                       **metrics.operating_point(y, p, threshold),
                                       # the reference for drift of nightly scores (dcx.core.drift)
                                       "score_histogram": drift.score_histogram(p.tolist())}}
        card.training.update(best_epoch=self.best_epoch, unreadable_images=len(self.unreadable))
        card.ood = fit_ood(self.model, self.splits["train"], self.splits["val"], self.classes, size=c.img_size,
                           device=self.device, batch_size=c.batch_size, rejection_rate=c.ood_rejection_rate)
        save_checkpoint(self.out / BEST, _cpu_state(self.model), card)
        write_json(self.out / CARD, card.to_dict())
        v = card.metrics["validation"]
        self.log(f"best epoch {self.best_epoch}: val AUC {v['auc']:.4f}; threshold {threshold:.4g} ({policy}): "
                 f"sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f}")
        self.log(f"OOD score fitted on {card.ood['n_train']} training images; threshold {card.ood['threshold']:.4g} "
                 f"marks {card.ood['val_rejected']:.1%} of validation images out of distribution")
        self.log(f"held-out test split: dcx-eval {self.out / BEST} --data {self.out / SPLITS_DIR / 'test.csv'} --out DIR")
        return self.out / BEST

    def close(self) -> None:
        self.train_loader = self.val_loader = None  # stops persistent loader workers now
        self.log.close()


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _describe_weights(config: TrainConfig) -> str:
    start = {"imagenet": "ImageNet weights", "none": "from scratch"}.get(config.weights, f"weights {config.weights}")
    return f"{start}, {'backbone frozen' if config.freeze_backbone else 'full fine-tuning'}"


def _read_split(path: Path) -> list[Sample]:
    """A saved split manifest; a split can be empty (header only) on tiny data."""
    with open(path, encoding="utf-8") as f:
        has_rows = len(f.readlines()) > 1
    return read_samples(path) if has_rows else []


def _check_config(c: TrainConfig) -> None:
    if c.epochs < 1 or c.batch_size < 1 or c.img_size < 16 or c.lr <= 0:
        raise DcxError("--epochs and --batch-size must be at least 1, --img-size at least 16, --lr positive")
    if not 0 < c.ood_rejection_rate < 1:
        raise DcxError(f"--ood-rejection-rate {c.ood_rejection_rate} must be in (0, 1)")
    if not 0 < c.target_sensitivity <= 1:
        raise DcxError(f"--target-sensitivity {c.target_sensitivity} must be in (0, 1]")
    torch_device(c.device)


def _check_validation(val: list[Sample], positive: str) -> None:
    labels = {s.label for s in val}
    if positive not in labels or labels == {positive}:
        missing = positive if positive not in labels else "non-" + positive
        raise DcxError(f"the validation split has no {missing} images ({len(val)} in all), so neither AUC nor a "
                       "threshold can be chosen; add images or raise --val-fraction")
