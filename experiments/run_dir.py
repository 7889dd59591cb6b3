"""The run directory written by :mod:`experiments.train`, and resuming from it.

Layout (a later issue loads it as a checkpoint series)::

    <out_dir>/run.json                      config, model spec, task info, device, versions
    <out_dir>/metrics.jsonl                 one JSON object per evaluation (step 0 = init)
    <out_dir>/checkpoints/step_0000100.pt   training checkpoints (format: experiments.checkpoint_io)
    <out_dir>/summary.json                  final metrics, grokking step, steps/s (at the end)

Checkpoints are written atomically; a checkpoint holds the model, the optimizer, the torch,
CUDA, numpy and Python RNG states, the callback states and the grokking bookkeeping.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.checkpoint_io import (
    TRAIN_FORMAT,
    TRAIN_FORMAT_VERSION,
    list_checkpoints,
    pack_extra,
    read_training_checkpoint,
    remove_stale_temps,
    save_atomic,
    write_text_atomic,
)
from experiments.models import model_spec
from interbasis import Callback, DataError, FormatError

# Config fields that may change on resume: they do not change the parameter trajectory.
RESUMABLE_CHANGES = frozenset(
    "steps eval_every checkpoint_every checkpoint_steps device eval_batch_size grok_threshold "
    "progress threads".split()
)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of ``<run_dir>/metrics.jsonl``; a torn last line (killed mid-write) is dropped.

    Raises
    ------
    FormatError
        A line before the last that is not a JSON object with an int ``"step"``.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        elif number < len(lines):  # only the last line can be torn by a kill
            raise FormatError(
                f"{path}, line {number}: not a metrics record (a JSON object with "
                f"an int 'step'): {line[:80]!r}"
            )
    return records


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class RunDir:
    """Step counter, grokking bookkeeping and the files of one training run.

    Parameters
    ----------
    out_dir : path
    config : dict
        The run's ``TrainConfig`` as a dict (stored in checkpoints, compared on resume).
    callbacks : sequence of interbasis.Callback
    """

    def __init__(self, out_dir: str | Path, config: dict[str, Any], callbacks: Sequence[Callback]):
        self.out_dir, self.config, self.callbacks = Path(out_dir), config, list(callbacks)
        self.step = 0
        self.grokking_step: int | None = None
        self.memorization_step: int | None = None

    def start(self) -> None:
        """A fresh run: create the directory and an empty metrics log."""
        if list_checkpoints(self.out_dir):
            raise DataError(f"{self.out_dir} already holds checkpoints; resume or use a new dir")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._remove_temps()
        write_text_atomic(self.out_dir / "metrics.jsonl", "")

    def _remove_temps(self) -> None:
        """Temporary files of a killed earlier process (never read; removed)."""
        remove_stale_temps(self.out_dir)
        remove_stale_temps(self.out_dir / "checkpoints")

    def save(self, model: nn.Module, opt: torch.optim.Optimizer) -> Path:
        """Write ``checkpoints/step_{step:07d}.pt`` atomically."""
        extra = {
            "numpy_rng": np.random.get_state(),  # noqa: NPY002 (the global state is what we save)
            "python_rng": random.getstate(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "callback_names": [type(cb).__qualname__ for cb in self.callbacks],
        }
        payload = {
            "format": TRAIN_FORMAT,
            "version": TRAIN_FORMAT_VERSION,
            "step": self.step,
            "model": model_spec(model),
            "model_state": model.state_dict(),
            "optimizer_state": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "train_config": self.config,
            "grokking_step": self.grokking_step,
            "memorization_step": self.memorization_step,
            "extra": pack_extra(extra),
        }
        return save_atomic(payload, self.out_dir / "checkpoints" / f"step_{self.step:07d}.pt")

    def restore(self, path: str | Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Load a checkpoint into ``model``/``opt``/RNGs/callbacks; drop later checkpoints and
        metrics records (they belong to the interrupted future of the run)."""
        ckpt = read_training_checkpoint(path)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        saved = ckpt["train_config"]
        changed = {
            k: (saved.get(k), v)
            for k, v in self.config.items()
            if k not in RESUMABLE_CHANGES and _plain(saved.get(k)) != _plain(v)
        }
        if changed:
            raise DataError(f"cannot resume {path}: config differs in {changed} (saved, now)")
        names = [type(cb).__qualname__ for cb in self.callbacks]
        if names != ckpt["extra"]["callback_names"]:
            raise DataError(
                f"cannot resume {path}: it holds states of callbacks "
                f"{ckpt['extra']['callback_names']}, got {names}"
            )
        part = "model state"
        try:  # the states come from a file: a mismatch is a bad checkpoint, named as such
            model.load_state_dict(ckpt["model_state"])
            part = "optimizer state"
            opt.load_state_dict(ckpt["optimizer_state"])
            part = "RNG states"
            torch.set_rng_state(ckpt["torch_rng"])
            if ckpt["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            np.random.set_state(ckpt["extra"]["numpy_rng"])  # noqa: NPY002
            random.setstate(ckpt["extra"]["python_rng"])
            part = "callback states"
            for cb, state in zip(self.callbacks, ckpt["extra"]["callbacks"], strict=True):
                cb.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as err:
            raise FormatError(
                f"cannot resume {path}: its {part} does not fit this run: {err!r:.300}"
            ) from err
        self.step = int(ckpt["step"])
        self.grokking_step = ckpt["grokking_step"]
        self.memorization_step = ckpt["memorization_step"]
        self._remove_temps()
        # later checkpoints first, newest first: a kill in between leaves a prefix of the old
        # run whose metrics are all still there, and the next resume trims them again
        for later_step, later in reversed(list_checkpoints(self.out_dir)):
            if later_step > self.step:
                later.unlink()
        kept = [r for r in read_metrics(self.out_dir) if r["step"] <= self.step]
        write_text_atomic(
            self.out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept)
        )

    def log(self, metrics: dict[str, Any], threshold: float) -> None:
        """Append an evaluation; the first step with test (train) accuracy >= threshold is the
        grokking (memorisation) step."""
        if self.grokking_step is None and (metrics.get("test_acc") or 0) >= threshold:
            self.grokking_step = self.step
        if self.memorization_step is None and (metrics.get("train_acc") or 0) >= threshold:
            self.memorization_step = self.step
        metrics.update(grokking_step=self.grokking_step, memorization_step=self.memorization_step)
        # one append of a whole line, flushed: a kill can only tear the last line, which
        # read_metrics drops (and a resume rewrites the log up to its checkpoint)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        """Write ``<out_dir>/name`` atomically (a kill leaves the old file or the new one)."""
        write_text_atomic(self.out_dir / name, json.dumps(content, indent=1))
