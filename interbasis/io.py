"""Files: atomic writes (complete or absent, never half-written) and the checked basis reader."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interbasis.errors import FormatError, WriteError


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path`` in one step.

    The temporary file lives in the target directory (so ``os.replace`` is atomic) and is
    removed if ``write`` fails. Raises :class:`~interbasis.errors.WriteError` (an ``OSError``)
    naming the path when the folder is missing or not writable, or ``path`` is a directory.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise WriteError(f"cannot write {target}: directory {directory} does not exist")
    if target.is_dir():
        raise WriteError(f"cannot write {target}: it is a directory")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise WriteError(f"cannot write {target}: {err.strerror}") from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(f"cannot write {target}: {err}") from err
        raise
    return target


BASIS_KINDS = ("interaction", "pca", "neuron")
BASIS_TENSORS = ("C", "C_pinv", "eigenvalues", "gram_eigenvalues", "mean")


def _read_tensor_file(source: Path) -> tuple[Any, Any]:
    """``(metadata, tensors)`` of a ``.pt`` or ``.safetensors`` file, unchecked."""
    import torch

    if source.suffix == ".pt":
        blob = torch.load(source, map_location="cpu", weights_only=True)
        return blob["metadata"], blob["tensors"]
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def read_bases_file(
    path: str | os.PathLike[str], format_name: str, format_version: int
) -> list[dict[str, Any]]:
    """Checked keyword arguments of every :class:`~interbasis.basis.Basis` in a basis file.

    The file is a ``.pt`` or ``.safetensors`` written by :func:`interbasis.save_bases`. Every
    field is checked, so a corrupt or edited file raises here, naming the basis and the field,
    instead of giving a basis that fails later. With ``d`` the activation width, ``n`` the number
    of nodes and ``r = d + 1`` with a constant node (else ``d``): ``C`` is ``(r, n)``,
    ``C_pinv`` ``(n, r)``, ``eigenvalues`` ``(n,)``, ``gram_eigenvalues`` ``(k,)`` with
    ``k <= d`` and ``mean`` ``(d,)``, all float64.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FormatError
        Not a basis file written by interbasis, an unknown format version, or a missing,
        mistyped or misshapen field (the message names the basis index and the field).
    """
    import torch

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no basis file at {source}")
    try:
        meta, tensors = _read_tensor_file(source)
    except Exception as err:  # torch/safetensors raise many types on a corrupt file
        raise FormatError(f"{source} is not a basis file written by interbasis: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise FormatError(f"{source} is not a basis file written by interbasis (no format tag)")
    if meta.get("version") != str(format_version):
        raise FormatError(
            f"{source} has basis format version {meta.get('version')!r}; this interbasis reads "
            f"version {format_version}"
        )
    try:
        headers = json.loads(meta["bases"])
    except (KeyError, TypeError, ValueError, RecursionError) as err:
        raise FormatError(f"{source}: metadata 'bases' is missing or not JSON ({err})") from err
    if not isinstance(headers, list) or not isinstance(tensors, dict):
        raise FormatError(f"{source}: metadata 'bases' is not a list, or tensors not a dict")
    out = []
    for i, h in enumerate(headers):
        if not (
            isinstance(h, dict)
            and isinstance(h.get("name"), str)
            and isinstance(h.get("has_constant"), bool)
            and h.get("kind") in BASIS_KINDS
        ):
            raise FormatError(
                f"{source}: basis {i} header must be {{'name': str, 'has_constant': bool, "
                f"'kind': one of {BASIS_KINDS}}}, got {h!r:.200}"
            )
        fields: dict[str, Any] = dict(h)
        for field in BASIS_TENSORS:
            t = tensors.get(f"{i}.{field}")
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float64:
                raise FormatError(
                    f"{source}: basis {i} ({h['name']!r}) has no float64 tensor {field!r}"
                )
            fields[field] = t
        d = fields["mean"].shape[0] if fields["mean"].ndim == 1 else -1
        n = fields["eigenvalues"].shape[0] if fields["eigenvalues"].ndim == 1 else -1
        r = d + int(h["has_constant"])
        shapes = {k: tuple(fields[k].shape) for k in BASIS_TENSORS}
        g = shapes["gram_eigenvalues"]
        if (
            min(d, n) < 0
            or (shapes["C"], shapes["C_pinv"]) != ((r, n), (n, r))
            or len(g) != 1
            or g[0] > d
        ):
            raise FormatError(
                f"{source}: basis {i} ({h['name']!r}) has inconsistent shapes {shapes}; expected "
                "C (r, n), C_pinv (n, r), eigenvalues (n,), gram_eigenvalues (k,), mean (d,) with "
                "r = d + 1 when it has a constant node"
            )
        out.append(fields)
    return out
