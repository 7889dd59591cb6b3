"""One training loop for every task: seeded, resumable, logged, with callbacks.

Writes the run directory described in :mod:`experiments.run_dir` (``run.json``,
``metrics.jsonl``, ``checkpoints/step_{step:07d}.pt``, ``summary.json``). Callbacks follow
:mod:`interbasis.callbacks`; evaluation steps are step 0 (before the first update, fresh runs
only), every ``eval_every`` steps and the last step. Batch order and learning-rate warm-up are
functions of the step; a fresh run seeds the global torch/numpy/Python RNGs with ``seed``, and
checkpoints restore model, optimizer, RNGs and callback states, so a resumed run is
bit-identical to an uninterrupted one on CPU.

CLI: ``python -m experiments.train --task add --p 113 --steps 20000 --out runs/add``;
``--quick`` trains add mod 23 in seconds; ``--resume`` continues the run in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from experiments.checkpoint_io import latest_checkpoint, list_checkpoints
from experiments.mlp import MLP_ACT_FNS
from experiments.models import MLPConfig, TransformerConfig, build_model, model_spec
from experiments.run_dir import RunDir, read_metrics
from experiments.seed001_model import Seed001Config
from experiments.tasks import (
    MODULAR_OPS,
    Task,
    division_sequence_task,
    modular_task,
    multitask,
    regression_task,
    two_tasks,
)
from experiments.transformer import ACT_FNS, NORMALIZATION_TYPES
from interbasis import Callback, DataError, FormatError, InterbasisError


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults: rib's mod-113 addition setting (full batch)."""

    task: str = "add"  # a modular op, "multitask", "div_seq", "x2", "sin5x" or "two_tasks"
    p: int = 113
    frac_train: float = 0.3
    data_seed: int = 0
    nonzero: bool = False
    ops: list[str] = field(default_factory=lambda: ["add", "mul"])  # multitask only
    n_samples: int = 1024  # regression tasks
    model: str = "transformer"  # or "mlp", "seed001"
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    act_fn: str = "relu"
    normalization_type: str | None = None
    d_hidden: list[int] = field(default_factory=lambda: [64, 64])  # mlp only
    optimizer: str = "adamw"  # or "adam"
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10  # lr ramps linearly over the first updates: lr·min(1, step/warmup)
    grad_clip: float | None = None
    loss: str = "ce"  # or "mse" (on one-hot targets scaled by 1/mse_scale, seed 001)
    mse_scale: float = 1.0
    batch_size: int | None = None  # None: full batch
    steps: int = 1000
    seed: int = 0  # model initialisation and batch order
    eval_every: int = 100
    checkpoint_every: int | None = None
    checkpoint_steps: list[int] = field(default_factory=list)
    grok_threshold: float = 0.95
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    threads: int | None = None  # torch CPU threads during training (restored afterwards)
    eval_batch_size: int = 16384
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise DataError(f"TrainConfig.betas (--betas) must be two numbers, got {self.betas!r}")
        for name in ("ops", "d_hidden", "checkpoint_steps"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise DataError(f"TrainConfig.{name} ({_flag(name)}) must be a list, got {value!r}")
        self.ops, self.d_hidden = list(self.ops), list(self.d_hidden)
        self.checkpoint_steps = list(self.checkpoint_steps)
        validate_config(self)
        self.betas = (float(self.betas[0]), float(self.betas[1]))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# name -> (smallest accepted value, None accepted); bools are not ints here
_INT_FIELDS: dict[str, tuple[int, bool]] = {
    "p": (2, False),
    "data_seed": (0, False),
    "n_samples": (1, False),
    "n_layers": (1, False),
    "d_model": (1, False),
    "n_heads": (1, False),
    "d_head": (1, False),
    "d_mlp": (1, False),
    "warmup_steps": (0, False),
    "batch_size": (1, True),
    "steps": (0, False),
    "seed": (0, False),
    "eval_every": (0, False),
    "checkpoint_every": (1, True),
    "eval_batch_size": (1, False),
    "threads": (1, True),
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "task": (*MODULAR_OPS, "multitask", "div_seq", "x2", "sin5x", "two_tasks"),
    "model": ("transformer", "seed001", "mlp"),
    "optimizer": ("adamw", "adam"),
    "loss": ("ce", "mse"),
    "normalization_type": NORMALIZATION_TYPES,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


def validate_config(cfg: TrainConfig) -> None:
    """Check every field of ``cfg`` up front (type and range).

    Raises
    ------
    DataError
        Naming the field, its CLI flag and the value received, and what is accepted.
    """

    def bad(name: str, accepted: str) -> DataError:
        return DataError(
            f"TrainConfig.{name} must be {accepted} ({_flag(name)}), got {getattr(cfg, name)!r}"
        )

    for name, (minimum, none_ok) in _INT_FIELDS.items():
        value = getattr(cfg, name)
        if value is None and none_ok:
            continue
        if not _is_int(value) or value < minimum:
            raise bad(name, f">= {minimum}{' or None' if none_ok else ''}, an int")
    if not _is_int(cfg.seed) or cfg.seed >= 2**32:
        raise bad("seed", "an int in [0, 2**32)")
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            what = name.replace("_", " ")
            raise DataError(
                f"unknown {what} {getattr(cfg, name)!r} (TrainConfig.{name}, {_flag(name)}); "
                f"expected one of {choices}"
            )
    acts = {"transformer": ACT_FNS, "mlp": MLP_ACT_FNS}.get(cfg.model)
    if acts is not None and cfg.act_fn not in acts:
        raise bad("act_fn", f"one of {acts} for model={cfg.model!r}")
    if not _is_number(cfg.lr) or cfg.lr <= 0:
        raise bad("lr", "a finite number > 0")
    if not _is_number(cfg.frac_train) or not 0 < cfg.frac_train <= 1:
        raise DataError(
            f"need TrainConfig.frac_train in (0, 1] (--frac-train), got {cfg.frac_train!r}"
        )
    if not _is_number(cfg.weight_decay) or cfg.weight_decay < 0:
        raise bad("weight_decay", "a finite number >= 0")
    if not all(_is_number(b) and 0 <= b < 1 for b in cfg.betas):
        raise bad("betas", "two numbers in [0, 1)")
    if cfg.grad_clip is not None and (not _is_number(cfg.grad_clip) or cfg.grad_clip <= 0):
        raise bad("grad_clip", "a finite number > 0 or None")
    if not _is_number(cfg.mse_scale) or cfg.mse_scale <= 0:
        raise bad("mse_scale", "a finite number > 0")
    if not _is_number(cfg.grok_threshold) or not 0 <= cfg.grok_threshold <= 1:
        raise bad("grok_threshold", "a number in [0, 1]")
    for name in ("nonzero", "progress"):
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, "true or false")
    if not cfg.ops or any(op not in MODULAR_OPS for op in cfg.ops):
        raise bad("ops", f"a non-empty list of {MODULAR_OPS}")
    if any(not _is_int(d) or d < 1 for d in cfg.d_hidden):
        raise bad("d_hidden", "a list of ints >= 1")
    if any(not _is_int(s) or s < 0 for s in cfg.checkpoint_steps):
        raise bad("checkpoint_steps", "a list of ints >= 0")
    if not isinstance(cfg.device, str) or not cfg.device:
        raise bad("device", '"auto", "cpu", "cuda" or another torch device name')
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except (RuntimeError, ValueError) as err:
            raise bad("device", '"auto" or a torch device name such as "cpu" or "cuda"') from err


def quick_config(**overrides: Any) -> TrainConfig:
    """Seconds on a CPU: add mod 23, 1-layer d=32 transformer, 50 % train, 300 full-batch steps."""
    base: dict[str, Any] = dict(p=23, frac_train=0.5, d_model=32, n_heads=2, d_head=16)
    base.update(d_mlp=64, lr=3e-3, steps=300, eval_every=50)
    return TrainConfig(**{**base, **overrides})


@dataclass
class TrainResult:
    model: nn.Module
    out_dir: Path
    step: int
    metrics: dict[str, Any]  # the last evaluation
    history: list[dict[str, Any]]  # every evaluation of the run (metrics.jsonl)
    grokking_step: int | None  # first eval step with test_acc >= grok_threshold
    memorization_step: int | None  # first eval step with train_acc >= grok_threshold
    steps_per_s: float


def build_task(cfg: TrainConfig) -> Task:
    if cfg.task in MODULAR_OPS:
        return modular_task(cfg.task, cfg.p, cfg.frac_train, cfg.data_seed, cfg.nonzero)
    if cfg.task == "div_seq":  # seed 001's [x, op, y, eq] division sequences
        return division_sequence_task(cfg.p, cfg.frac_train, cfg.data_seed)
    if cfg.task == "multitask":
        return multitask(cfg.ops, cfg.p, cfg.frac_train, cfg.data_seed, cfg.nonzero)
    if cfg.task in ("x2", "sin5x"):
        return regression_task(cfg.task, cfg.n_samples, cfg.frac_train, cfg.data_seed)
    if cfg.task == "two_tasks":
        return two_tasks(n=cfg.n_samples, frac_train=cfg.frac_train, seed=cfg.data_seed)
    raise DataError(
        f"unknown task {cfg.task!r}; expected {MODULAR_OPS} or multitask/div_seq/x2/sin5x/two_tasks"
    )


def build_model_for(cfg: TrainConfig, task: Task) -> nn.Module:
    """The model ``cfg`` describes, sized for ``task`` (vocabulary, context, outputs)."""
    if cfg.model == "transformer":
        if "d_vocab" not in task.info:
            raise DataError(f"task {task.name} has no tokens; use model='mlp'")
        names = "n_layers d_model n_heads d_head d_mlp act_fn normalization_type seed".split()
        shared = {name: getattr(cfg, name) for name in names}
        info = task.info
        return build_model(
            TransformerConfig(n_ctx=info["n_ctx"], d_vocab=info["d_vocab"], **shared)
        )
    if cfg.model == "seed001":
        if "d_vocab" not in task.info:
            raise DataError(f"task {task.name} has no tokens; use model='mlp'")
        n_ctx = max(5, task.info["n_ctx"])  # the seed's position table has 5 rows
        sizes = {name: getattr(cfg, name) for name in "n_layers d_model n_heads d_mlp".split()}
        return build_model(
            Seed001Config(d_vocab=task.info["d_vocab"], n_ctx=n_ctx, seed=cfg.seed, **sizes)
        )
    if cfg.model == "mlp":
        if task.is_classification:
            raise DataError(f"task {task.name} is tokenised; use model='transformer'")
        d_in, d_out = task.info["d_in"], task.info["d_out"]
        return build_model(MLPConfig(d_in, cfg.d_hidden, d_out, cfg.act_fn, seed=cfg.seed))
    raise DataError(f"unknown model {cfg.model!r}; expected 'transformer', 'seed001' or 'mlp'")


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if cfg.optimizer in optimizers:
        return optimizers[cfg.optimizer](
            model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
    raise DataError(f"unknown optimizer {cfg.optimizer!r}; expected 'adamw' or 'adam'")


def loss_sum(cfg: TrainConfig, task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed loss of a batch (float64): CE in float64 as rib does, or MSE (mean over outputs)."""
    if task.is_classification and cfg.loss == "ce":
        return F.cross_entropy(out.double(), y, reduction="sum")
    if task.is_classification and cfg.loss == "mse":
        target = F.one_hot(y, out.shape[-1]).to(out.dtype) / cfg.mse_scale
        return F.mse_loss(out.double(), target.double(), reduction="sum") / out.shape[-1]
    if cfg.loss == "mse" or not task.is_classification:
        return F.mse_loss(out.double(), y.double(), reduction="sum") / out.shape[-1]
    raise DataError(f"unknown loss {cfg.loss!r}; expected 'ce' or 'mse'")


@torch.no_grad()
def evaluate(
    model: nn.Module, cfg: TrainConfig, task: Task, data: dict[str, Any]
) -> dict[str, Any]:
    """Loss and accuracy (None for regression / empty sets) on the train and test splits."""
    was_training = model.training
    model.eval()
    metrics: dict[str, Any] = {}
    for split in ("train", "test"):
        x, y = data[split]
        total, correct = 0.0, 0
        for start in range(0, len(x), cfg.eval_batch_size):
            xb, yb = x[start : start + cfg.eval_batch_size], y[start : start + cfg.eval_batch_size]
            out = model(xb)
            total += float(loss_sum(cfg, task, out, yb))
            if task.is_classification:
                correct += int((out.argmax(-1) == yb).sum())
        n = len(x)
        metrics[f"{split}_loss"] = total / n if n else None
        metrics[f"{split}_acc"] = correct / n if n and task.is_classification else None
    model.train(was_training)
    return metrics


def batch_indices(cfg: TrainConfig, n_train: int, step: int) -> torch.Tensor | None:
    """Indices of the step's mini-batch (None = full batch): epoch-wise permutations seeded by
    ``(seed, epoch)``, so the order is a pure function of the step (resumable)."""
    if cfg.batch_size is None or cfg.batch_size >= n_train:
        return None
    per_epoch = math.ceil(n_train / cfg.batch_size)
    epoch, j = divmod(step - 1, per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(n_train, generator=gen)[j * cfg.batch_size : (j + 1) * cfg.batch_size]
    return perm.to(resolve_device(cfg.device))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    resume: bool | str | Path = False,
) -> TrainResult:
    """Train ``cfg``'s model on ``cfg``'s task, writing the run directory ``out_dir``.

    ``resume=True`` continues from the latest checkpoint in ``out_dir`` (a fresh start when
    there is none); a path resumes from that checkpoint. Without ``resume`` an ``out_dir``
    that already holds checkpoints is refused. Every file of the run directory is written
    atomically, so a run killed at any point (even SIGKILL) and resumed ends with the same
    checkpoints and metrics as an uninterrupted one.

    Raises
    ------
    DataError
        A config field of the wrong type or out of range (:func:`validate_config`), a run
        directory that already holds checkpoints, a resume whose config differs.
    FormatError
        A checkpoint to resume from that cannot be read or does not fit.
    """
    validate_config(cfg)  # the dataclass may have been changed since it was built
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, Path(out_dir), callbacks, resume)
    finally:
        torch.set_num_threads(threads)


def _train(
    cfg: TrainConfig, out_dir: Path, callbacks: Sequence[Callback], resume: bool | str | Path
) -> TrainResult:
    device = resolve_device(cfg.device)
    task = build_task(cfg)
    model = build_model_for(cfg, task).to(device)
    opt = make_optimizer(cfg, model)
    x_train, y_train = (t.to(device) for t in task.split("train"))
    data = {"train": (x_train, y_train), "test": tuple(t.to(device) for t in task.split("test"))}
    run = RunDir(out_dir, asdict(cfg), callbacks)
    restored = False
    if resume is not False and (list_checkpoints(out_dir) or not isinstance(resume, bool)):
        run.restore(latest_checkpoint(out_dir) if resume is True else Path(resume), model, opt)
        restored = True
    else:
        run.start()
        torch.manual_seed(cfg.seed)  # global RNGs too, for callbacks that draw from them
        np.random.seed(cfg.seed)  # noqa: NPY002
        random.seed(cfg.seed)
    info = {k: v for k, v in task.info.items() if not isinstance(v, torch.Tensor)}
    meta: dict[str, Any] = dict(
        config=asdict(cfg), model=model_spec(model), task=task.name, task_info=info
    )
    meta.update(device=str(device), torch=torch.__version__, resumed_at=run.step or None)
    run.write_json("run.json", meta)
    ckpt_steps = set(cfg.checkpoint_steps) | {cfg.steps}

    def eval_and_log(metrics: dict[str, Any]) -> None:
        metrics.update(evaluate(model, cfg, task, data))
        run.log(metrics, cfg.grok_threshold)
        for cb in run.callbacks:
            cb.on_eval(run.step, model, metrics)

    for cb in run.callbacks:
        cb.on_train_begin(model, opt)
    model.train()
    if not restored:  # fresh run: evaluate (and optionally checkpoint) the initialisation
        # (a run restored from its step-0 checkpoint already logged that evaluation)
        if cfg.eval_every:
            eval_and_log({"step": 0})
        if 0 in ckpt_steps or cfg.checkpoint_every:
            run.save(model, opt)
    start_step, t0 = run.step, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not cfg.progress, desc=task.name)
    while run.step < cfg.steps:
        run.step += 1
        lr = cfg.lr * min(1.0, run.step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in opt.param_groups:
            group["lr"] = lr
        idx = batch_indices(cfg, len(x_train), run.step)
        batch = (x_train, y_train) if idx is None else (x_train[idx], y_train[idx])
        loss = loss_sum(cfg, task, model(batch[0]), batch[1]) / len(batch[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for cb in run.callbacks:
            cb.on_before_step(run.step, model, opt, batch)
        opt.step()
        for cb in run.callbacks:
            cb.on_step(run.step, model, opt, batch)
        if cfg.eval_every and (run.step % cfg.eval_every == 0 or run.step == cfg.steps):
            eval_and_log({"step": run.step, "lr": lr, "batch_loss": float(loss.detach())})
        every = cfg.checkpoint_every
        if run.step in ckpt_steps or (every and run.step % every == 0):
            run.save(model, opt)
        bar.update(1)
    bar.close()
    for cb in run.callbacks:
        cb.on_train_end(run.step, model)
    elapsed = time.perf_counter() - t0
    rate = (run.step - start_step) / elapsed if run.step > start_step else float("nan")
    history = read_metrics(out_dir)
    result = TrainResult(
        model.eval(),
        out_dir,
        run.step,
        history[-1] if history else {},
        history,
        run.grokking_step,
        run.memorization_step,
        rate,
    )
    summary: dict[str, Any] = dict(
        step=run.step, metrics=result.metrics, grokking_step=run.grokking_step
    )
    summary.update(memorization_step=run.memorization_step, steps_per_s=rate, device=str(device))
    run.write_json("summary.json", summary)
    return result


def _parse(kind: str, text: str) -> Any:
    """Parse a CLI value by its TrainConfig annotation (``int``, ``float | None``, ...)."""
    if kind.endswith(" | None"):
        if text.lower() in ("none", "null", ""):
            return None
        kind = kind[: -len(" | None")]
    if kind.startswith(("list[", "tuple[")):
        inner = kind[kind.index("[") + 1 : -1].split(",")[0].strip()
        return [_parse(inner, t) for t in text.split(",") if t.strip()]
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    return {"int": int, "float": float, "str": str}[kind](text)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: every TrainConfig field is a flag (``--weight-decay 0``, ``--betas 0.9,0.98``)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=None, help="run directory (required)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in --out (from its latest or the given checkpoint)",
    )
    parser.add_argument("--quick", action="store_true", help="add mod 23 in seconds")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    kinds = {f.name: str(f.type) for f in fields(TrainConfig) if f.name != "progress"}
    defaults = asdict(TrainConfig())
    for name, kind in kinds.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=kind.upper(),
            help=f"default {defaults[name]!r}",
        )
    args = parser.parse_args(argv)
    try:
        overrides = {
            n: _parse(k, getattr(args, n)) for n, k in kinds.items() if getattr(args, n) is not None
        }
    except (ValueError, KeyError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))
    try:
        cfg = _cli_config(args, overrides)  # validated before anything is written
        if args.out is None:
            raise DataError("--out is required: the run directory to write (or to resume)")
        result = train(cfg, args.out, resume=args.resume)
    except (InterbasisError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "out_dir": str(result.out_dir),
                "step": result.step,
                **{
                    k: result.metrics.get(k)
                    for k in ("train_loss", "train_acc", "test_loss", "test_acc")
                },
                "grokking_step": result.grokking_step,
                "steps_per_s": round(result.steps_per_s, 2),
            }
        )
    )
    return 0


def _cli_config(args: argparse.Namespace, overrides: dict[str, Any]) -> TrainConfig:
    """The run's config: ``run.json``'s when resuming a run that has one, else ``--quick`` or
    the defaults; then the flags given."""
    saved = Path(args.out) / "run.json" if args.out is not None else None
    if args.resume and saved is not None and saved.is_file():
        try:
            stored = json.loads(saved.read_text())["config"]
            base = TrainConfig(**stored)
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise FormatError(
                f"cannot resume from {saved}: its 'config' is not a training config of this "
                f"version ({type(err).__name__}: {err})"
            ) from err
    else:
        base = quick_config() if args.quick else TrainConfig()
    return TrainConfig(**{**asdict(base), **overrides, "progress": not args.no_progress})


if __name__ == "__main__":
    sys.exit(main())
