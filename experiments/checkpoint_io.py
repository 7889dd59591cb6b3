"""Reading and writing checkpoints: TransformerLens state dicts and our training checkpoints.

Two formats are read by :func:`load_checkpoint`:

* a TransformerLens state dict (``*.pt``) with rib's ``config.yaml`` beside it (its ``model``
  section is a :class:`~experiments.transformer.TransformerConfig`), as shipped in
  ``experiments/checkpoints/rib_modadd_seed0/`` (MIT licence of ApolloResearch/rib beside it);
* a training checkpoint written by :mod:`experiments.train`: a dict with
  ``format = "interbasis.experiments.train"``, ``version``, ``step``, ``model`` (the model spec
  ``{"kind", "config"}``), ``model_state``, ``optimizer_state``, ``torch_rng``, ``cuda_rng``,
  ``train_config``, ``grokking_step`` and ``extra`` (pickled bytes holding the numpy/Python RNG
  states and the callback states, unpickled only when resuming).

Everything except ``extra`` loads with ``torch.load(..., weights_only=True)``. Files are always
mapped to CPU first, so checkpoints saved on CUDA load on CPU-only machines.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from experiments.models import model_from_spec
from experiments.tasks import Task, modular_task_from_rib_config
from experiments.transformer import Transformer
from interbasis import FormatError, ShapeError

TRAIN_FORMAT = "interbasis.experiments.train"
TRAIN_FORMAT_VERSION = 1
RIB_MODADD_DIR = Path(__file__).resolve().parent / "checkpoints" / "rib_modadd_seed0"
RIB_MODADD_CHECKPOINT = RIB_MODADD_DIR / "model_epoch_60000.pt"
# Buffers TransformerLens may or may not store; our defaults are used when absent.
_OPTIONAL_KEYS = re.compile(r"blocks\.\d+\.attn\.(mask|IGNORE)$")
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
TEMP_MARK = ".tmp"  # temporary files: f".{name}{TEMP_MARK}{pid}" beside the target
_TEMP_FILE = re.compile(r"\..+\.tmp\d+")
# Entries read_training_checkpoint checks (types), of the checkpoint and of its 'extra' section.
_TRAIN_ENTRIES: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "model": (dict,),
    "model_state": (dict,),
    "optimizer_state": (dict,),
    "torch_rng": (torch.Tensor,),
    "cuda_rng": (list,),
    "train_config": (dict,),
    "grokking_step": (int, type(None)),
    "memorization_step": (int, type(None)),
}
_EXTRA_ENTRIES: dict[str, tuple[type, ...]] = {
    "numpy_rng": (tuple,),
    "python_rng": (tuple,),
    "callbacks": (list,),
    "callback_names": (list,),
}


def _torch_load(path: Path, weights_only: bool = True) -> Any:
    if not path.is_file():
        raise FormatError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise FormatError(
            f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def read_rib_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.yaml`` beside a TransformerLens checkpoint (or in a directory), as a dict."""
    path = Path(path)
    config_path = path / "config.yaml" if path.is_dir() else path.parent / "config.yaml"
    if not config_path.is_file():
        raise FormatError(f"no config.yaml beside {path}: a TransformerLens state dict needs one")
    try:
        config = yaml.safe_load(config_path.read_bytes())  # bytes: YAML detects the encoding
    except (yaml.YAMLError, RecursionError) as err:
        raise FormatError(f"cannot parse {config_path}: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise FormatError(f"{config_path} has no 'model' section")
    return config


def load_state_checked(model: nn.Module, state: Any, source: str) -> None:
    """``model.load_state_dict(state)`` with errors that name the offending tensor.

    Missing or unexpected keys raise FormatError; a shape that differs from the one the model
    config implies raises ShapeError naming the tensor and both shapes. TransformerLens's
    optional buffers ``attn.mask`` / ``attn.IGNORE`` may be absent.
    """
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise FormatError(f"{source}: expected a state dict of tensors (keys: parameter names)")
    expected = model.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not _OPTIONAL_KEYS.search(k))
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise FormatError(
            f"{source}: state dict does not match the model config: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    for key, tensor in state.items():
        if tensor.is_floating_point() != expected[key].is_floating_point():
            raise FormatError(
                f"{source}: tensor {key!r} has dtype {tensor.dtype} in the file, the model has "
                f"{expected[key].dtype}"
            )
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ShapeError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)} in the file but the "
                f"model config implies {tuple(expected[key].shape)}"
            )
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point() and t.ndim > 0}
    if len(float_dtypes) == 1:
        model.to(float_dtypes.pop())  # keep float64 checkpoints in float64
    model.load_state_dict(state, strict=False)


def _model_from_file_spec(spec: Any, path: Path) -> nn.Module:
    """``model_from_spec`` for a spec read from a file: a bad spec is a bad file."""
    try:
        return model_from_spec(spec)
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError, MemoryError) as err:
        # InterbasisError subclasses (DataError, FormatError) included: name the file too
        raise FormatError(f"{path}: cannot build the model its spec describes: {err}") from err


def _finish(model: nn.Module, map_location: str | torch.device | None) -> nn.Module:
    if map_location is not None:
        model.to(torch.device(map_location))
    return model.eval()


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The training checkpoint with the highest step in ``<run_dir>/checkpoints``."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FormatError(f"no training checkpoints (step_*.pt) in {Path(run_dir) / 'checkpoints'}")
    return checkpoints[-1][1]


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of ``<run_dir>/checkpoints/step_{step:07d}.pt``, by step."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("step_*.pt") if folder.is_dir() else []:
        match = _STEP_FILE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = None
) -> nn.Module:
    """Load a model, in eval mode, from a checkpoint file or directory.

    Parameters
    ----------
    path : path
        A TransformerLens state dict with ``config.yaml`` beside it, a training checkpoint
        (``step_*.pt``), a training run directory (its latest checkpoint), or a directory
        holding ``config.yaml`` and one ``*.pt``.
    map_location : device, optional
        Device to put the model on (default: CPU). Files are always read onto CPU first.

    Raises
    ------
    FormatError
        Missing, corrupt or unrecognised file; config keys we do not implement; keys that do
        not match the model.
    ShapeError
        A tensor whose shape differs from the one the config implies (names both shapes).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            path = latest_checkpoint(path)
        else:
            candidates = sorted(path.glob("*.pt"))
            if len(candidates) != 1:
                raise FormatError(f"{path} holds {len(candidates)} *.pt files; pass one file")
            path = candidates[0]
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == TRAIN_FORMAT:
        model = _model_from_file_spec(obj.get("model"), path)
        load_state_checked(model, obj.get("model_state"), str(path))
        return _finish(model, map_location)
    if isinstance(obj, dict) and "embed.W_E" in obj:
        spec = {"kind": "transformer", "config": read_rib_config(path)["model"]}
        model = _model_from_file_spec(spec, path)
        load_state_checked(model, obj, str(path))
        return _finish(model, map_location)
    raise FormatError(
        f"{path} is neither a training checkpoint nor a TransformerLens state dict (no embed.W_E)"
    )


def load_rib_modadd(map_location: str | torch.device | None = None) -> Transformer:
    """The shipped rib checkpoint: 1-layer ReLU transformer, (a + b) mod 113, 60 000 epochs."""
    model = load_checkpoint(RIB_MODADD_CHECKPOINT, map_location)
    assert isinstance(model, Transformer)
    return model


def rib_modadd_task() -> Task:
    """The task and split the shipped checkpoint was trained on (from its ``config.yaml``)."""
    return modular_task_from_rib_config(read_rib_config(RIB_MODADD_CHECKPOINT)["dataset"])


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every OS or file system can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_atomic(path: Path, fill: Any) -> Path:
    """``fill(handle)`` a temporary file beside ``path``, fsync it, ``os.replace`` it onto
    ``path`` and fsync the folder: readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:  # created like any open(): 0o666 less the umask
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file, fsync, then ``os.replace`` (never a partial file)."""
    return _replace_atomic(Path(path), lambda fh: torch.save(obj, fh))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` as :func:`save_atomic` does: old file or new file."""
    data = text.encode("utf-8")
    return _replace_atomic(Path(path), lambda fh: fh.write(data))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (``.NAME.tmpPID`` of
    :func:`save_atomic` / :func:`write_text_atomic`); returns what was removed."""
    folder = Path(folder)
    removed = []
    for path in folder.glob(f".*{TEMP_MARK}*") if folder.is_dir() else []:
        if path.is_file() and _TEMP_FILE.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def pack_extra(extra: dict[str, Any]) -> bytes:
    """Pickle the parts of a training checkpoint that ``weights_only`` cannot hold."""
    return pickle.dumps(extra, protocol=pickle.HIGHEST_PROTOCOL)


def read_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training checkpoint as a dict, ``extra`` unpickled (only open runs you trust)."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_FORMAT:
        raise FormatError(f"{path} is not a training checkpoint written by experiments.train")
    if obj.get("version") != TRAIN_FORMAT_VERSION:
        raise FormatError(
            f"{path} has training-checkpoint version {obj.get('version')!r}; "
            f"this code reads version {TRAIN_FORMAT_VERSION}"
        )
    try:
        obj["extra"] = pickle.loads(obj["extra"])
    except Exception as err:
        raise FormatError(f"{path}: cannot unpickle its 'extra' section: {err}") from err
    for where, entries in ((obj, _TRAIN_ENTRIES), (obj["extra"], _EXTRA_ENTRIES)):
        if not isinstance(where, dict):
            raise FormatError(f"{path}: its 'extra' section is not a dict")
        for key, kinds in entries.items():
            value = where.get(key, KeyError)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise FormatError(
                    f"{path}: entry {key!r} is {'missing' if value is KeyError else type(value)};"
                    f" a training checkpoint holds {' or '.join(k.__name__ for k in kinds)}"
                )
    if obj["step"] < 0:
        raise FormatError(f"{path}: step {obj['step']} is negative")
    return obj


def task_for_checkpoint(path: str | os.PathLike[str]) -> Task:
    """The task a checkpoint was trained on: from rib's ``config.yaml`` beside a TransformerLens
    state dict, or from the training config stored in our training checkpoints / run dirs."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = latest_checkpoint(path)
    elif path.is_dir():
        candidates = sorted(path.glob("*.pt"))
        if len(candidates) != 1:
            raise FormatError(f"{path} holds {len(candidates)} *.pt files; pass one file")
        path = candidates[0]
    if (path.parent / "config.yaml").is_file():
        return modular_task_from_rib_config(read_rib_config(path)["dataset"])
    from experiments.train import TrainConfig, build_task

    return build_task(TrainConfig(**read_training_checkpoint(path)["train_config"]))
