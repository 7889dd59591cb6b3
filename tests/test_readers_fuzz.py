"""Readers never crash on arbitrary bytes (issue 19): a correct load or our own error.

Every reader of a file format gets random bytes and files mutated from valid ones we write:
truncated, bytes flipped, numbers and attribute types changed, elements dropped or duplicated,
and (for npz / torch files) the stored objects edited before they are written again. The only
outcomes allowed are a load that passes the object's own validation, or an exception of our
own hierarchy (``graphs.GraphError`` / ``interbasis.InterbasisError``). Anything else (a raw
``KeyError``, ``TypeError``, ``IndexError``, a torch ``RuntimeError``) fails the test, and
hypothesis shrinks it to the smallest mutation that crashes.

The examples are derandomized (the same on every run) and few per reader, to keep the default
suite fast; ``INTERBASIS_FUZZ_EXAMPLES=5000`` runs a deeper randomised search.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphs import GraphError, InteractionGraph, NodeLayer, save_npz, write_graphml, write_json
from graphs.export import load_npz, read_graphml, read_json

# INTERBASIS_FUZZ_EXAMPLES=5000 runs a deeper, randomised search (not in the default suite)
DEEP = int(os.environ.get("INTERBASIS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=DEEP or 80,
    deadline=None,
    derandomize=not DEEP,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def small_graph(modules: bool = True) -> InteractionGraph:
    rng = np.random.default_rng(0)
    sizes = [3, 4, 2]
    layers = []
    for k, n in enumerate(sizes):
        const = np.zeros(n, dtype=bool)
        eig = rng.uniform(0.1, 2.0, n)
        if k < len(sizes) - 1:
            const[0], eig[0] = True, np.nan
        layers.append(NodeLayer(f"l{k}", n, eig, const, rng.uniform(0.0, 1.0, n)))
    edges = []
    for a, b in itertools.pairwise(layers):
        e = rng.exponential(1.0, (b.size, a.size)) * (rng.random((b.size, a.size)) < 0.8)
        e[:, a.is_constant] = 0.0
        e[b.is_constant, :] = 0.0
        edges.append(e)
    g = InteractionGraph(layers, edges, {"model": "fuzz", "seed": 0})
    return g.with_modules({"l1:1": 0, "l1:2": 1, "l2:0": 0}) if modules else g


# ------------------------------------------------------------------------- byte mutations
@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncate, flip, insert, delete or overwrite bytes of ``data`` (or random bytes)."""
    n = len(data)
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "splice", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    pos = draw(st.integers(0, n - 1))
    if kind == "truncate":
        return data[:pos]
    if kind == "flip":
        out = bytearray(data)
        for p in [pos, *draw(st.lists(st.integers(0, n - 1), max_size=4))]:
            out[p] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + draw(st.integers(1, 64)) :]
    other = draw(st.integers(0, n - 1))  # splice: copy a chunk of the file over another place
    chunk = data[other : other + draw(st.integers(1, 64))]
    return data[:pos] + chunk + data[pos + len(chunk) :]


NUMBER = re.compile(rb"-?\d+(\.\d+)?(e-?\d+)?")
REPLACEMENTS = [b"-1", b"0", b"1", b"2", b"99", b"1e308", b"NaN", b"-0.5", b"true", b"x", b""]
REPLACEMENTS += [b"9" * 25, b"-" + b"9" * 400, b"1e999", b"Infinity", b"0x1F", b"1_000"]


@st.composite
def text_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """Line and token edits of a text file: drop / duplicate / swap lines, change a number,
    change an attribute's value or type, or a byte mutation."""
    lines = data.split(b"\n")
    kind = draw(st.sampled_from(["bytes", "drop", "duplicate", "swap", "number", "token"]))
    if kind == "bytes":
        return draw(byte_mutation(data))
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "drop":
        return b"\n".join(lines[:i] + lines[i + 1 :])
    if kind == "duplicate":
        j = draw(st.integers(0, len(lines)))
        return b"\n".join([*lines[:j], lines[i], *lines[j:]])
    if kind == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if kind == "number":
        matches = list(NUMBER.finditer(data))
        m = matches[draw(st.integers(0, len(matches) - 1))]
        return data[: m.start()] + draw(st.sampled_from(REPLACEMENTS)) + data[m.end() :]
    tokens = [b'"double"', b'"int"', b'"string"', b'"boolean"', b"true", b"false", b"null"]
    tokens += [b'"l1:1"', b'"l2:0"', b"NaN", b'"weight"', b'"module"', b'"index"']
    old, new = draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens))
    count = draw(st.integers(1, 3))
    return data.replace(old, new, count)


def check(read: Callable[[Path], Any], path: Path, ours: type[Exception], kind: type) -> None:
    """A correct load (an object of ``kind``) or an error of our own hierarchy ``ours``."""
    try:
        out = read(path)
    except ours:
        return
    assert isinstance(out, kind), f"{read.__name__} returned {type(out)}"


class Files(dict[str, bytes]):
    """Valid files by suffix; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    g = small_graph()
    save_npz(g, folder / "g.npz")
    write_graphml(g, folder / "g.graphml")
    write_json(g, folder / "g.json")
    return Files({s: (folder / f"g.{s}").read_bytes() for s in ("npz", "graphml", "json")})


def test_valid_files_load(graph_files: dict[str, bytes], tmp_path: Path) -> None:
    """The starting points are correct loads (else the fuzzing below starts from garbage)."""
    g = small_graph()
    for suffix, read in (("npz", load_npz), ("graphml", read_graphml), ("json", read_json)):
        (tmp_path / f"g.{suffix}").write_bytes(graph_files[suffix])
        h = read(tmp_path / f"g.{suffix}")
        assert h.module_membership() == g.module_membership()
        for a, b in zip(g.edges, h.edges, strict=True):
            np.testing.assert_array_equal(a, b)


@FUZZ
@given(data=st.data())
def test_graphml_reader_survives_mutations(
    graph_files: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / "m.graphml"
    path.write_bytes(data.draw(text_mutation(graph_files["graphml"])))
    check(read_graphml, path, GraphError, InteractionGraph)


@FUZZ
@given(data=st.data())
def test_json_reader_survives_mutations(
    graph_files: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / "m.json"
    text = json.dumps(json.loads(graph_files["json"]), indent=0).encode()  # one token a line
    path.write_bytes(data.draw(text_mutation(text)))
    check(read_json, path, GraphError, InteractionGraph)


@FUZZ
@given(data=st.data())
def test_npz_reader_survives_byte_mutations(
    graph_files: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(data.draw(byte_mutation(graph_files["npz"])))
    check(load_npz, path, GraphError, InteractionGraph)


ODD_VALUES: list[Any] = [
    np.array([]),
    np.array(["a", "b"]),
    np.array(1.5),
    np.full(3, np.nan),
    np.full(4, -1.0),
    np.ones((2, 2)),
    np.array([np.inf, 1.0, 2.0]),
    np.array([1 + 2j, 0, 0]),
    np.array([0.5, 0.0, 1.0]),
    np.zeros(10**6, dtype=np.int8)[:3],
]
HEADER_EDITS: list[tuple[str, Any]] = [
    ("format", "other"),
    ("version", 2),
    ("version", True),
    ("layers", "l0"),
    ("layers", [{"name": "l0"}]),
    ("layers", [{"name": "l0", "size": -3}, {"name": "l1", "size": True}]),
    ("layers", [{"name": 5, "size": 3}]),
    ("layers", [{"name": "l0", "size": 10**12}]),
    ("metadata", [1, 2]),
    ("has_modules", "yes"),
    ("has_modules", False),
]


@FUZZ
@given(data=st.data())
def test_npz_reader_survives_edited_arrays(
    graph_files: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    """Arrays replaced by odd ones, dropped or duplicated; header entries changed or removed."""
    with np.load(io.BytesIO(graph_files["npz"])) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["header"]))
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(arrays)))
        action = data.draw(st.sampled_from(["replace", "drop", "copy", "header", "unheader"]))
        if action == "replace":
            arrays[key] = data.draw(st.sampled_from(ODD_VALUES))
        elif action == "drop":
            arrays.pop(key)
        elif action == "copy":
            arrays[data.draw(st.sampled_from(sorted(arrays)))] = arrays[key]
        elif action == "header":
            field, value = data.draw(st.sampled_from(HEADER_EDITS))
            header[field] = value
        else:
            header.pop(data.draw(st.sampled_from(sorted(header))))
    if "header" in arrays and arrays["header"].dtype.kind == "U":
        arrays["header"] = np.array(json.dumps(header))
    path = tmp_path / "m.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    check(load_npz, path, GraphError, InteractionGraph)


# ------------------------------------------------------------------------- basis files
@pytest.fixture(scope="module")
def basis_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from interbasis import build_bases, save_bases

    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    bases = build_bases(net.double().eval(), x.double(), ["0", "2", "output"], progress=False)
    folder = tmp_path_factory.mktemp("bases")
    for suffix in ("pt", "safetensors"):
        save_bases(bases, folder / f"b.{suffix}")
    return Files({s: (folder / f"b.{s}").read_bytes() for s in ("pt", "safetensors")})


@FUZZ
@given(data=st.data(), suffix=st.sampled_from(["pt", "safetensors"]))
def test_basis_reader_survives_byte_mutations(
    basis_files: dict[str, bytes], tmp_path: Path, data: st.DataObject, suffix: str
) -> None:
    from interbasis import Basis, InterbasisError, load_bases

    path = tmp_path / f"m.{suffix}"
    path.write_bytes(data.draw(byte_mutation(basis_files[suffix])))
    check(load_bases, path, InterbasisError, list)
    try:
        assert all(isinstance(b, Basis) for b in load_bases(path))
    except InterbasisError:
        pass


ODD_TENSORS = ["drop", "float32", "int", "scalar", "transpose", "grow", "nan"]
ODD_META: list[tuple[str, Any]] = [
    ("format", "other"),
    ("version", "2"),
    ("bases", "not json"),
    ("bases", "[1, 2]"),
    ("bases", '[{"name": "0", "has_constant": "yes", "kind": "interaction"}]'),
    ("bases", '[{"name": 3, "has_constant": true, "kind": "pca"}]'),
    ("bases", '[{"name": "0", "has_constant": false, "kind": "magic"}]'),
    ("bases", "[" + "[" * 100000 + "]" * 100000 + "]"),
]


@FUZZ
@given(data=st.data(), suffix=st.sampled_from(["pt", "safetensors"]))
def test_basis_reader_survives_edited_tensors(
    basis_files: dict[str, bytes], tmp_path: Path, data: st.DataObject, suffix: str
) -> None:
    """Tensors dropped, retyped or reshaped; metadata entries changed or removed."""
    import torch
    from safetensors.torch import load, save_file

    from interbasis import InterbasisError, load_bases

    if suffix == "pt":
        blob = torch.load(io.BytesIO(basis_files["pt"]), weights_only=True)
        meta, tensors = dict(blob["metadata"]), dict(blob["tensors"])
    else:
        tensors = load(basis_files["safetensors"])
        meta = json.loads(basis_files["safetensors"][8:].split(b"}}", 1)[0] + b"}}")["__metadata__"]
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(tensors)))
            action = data.draw(st.sampled_from(ODD_TENSORS))
            t = tensors.pop(key)
            edit: dict[str, Callable[[Any], Any]] = {
                "drop": lambda t: None,
                "float32": lambda t: t.float(),
                "int": lambda t: t.long(),
                "scalar": lambda t: t.reshape(-1)[:1].reshape(()).clone() if t.numel() else t,
                "transpose": lambda t: t.T.contiguous() if t.ndim == 2 else t.reshape(-1, 1),
                "grow": lambda t: torch.cat([t, t]) if t.ndim else t.reshape(1),
                "nan": lambda t: torch.full(t.shape, float("nan"), dtype=torch.float64),
            }
            replaced = edit[action](t)
            if replaced is not None:
                tensors[key] = replaced
        elif data.draw(st.booleans()):
            field, value = data.draw(st.sampled_from(ODD_META))
            meta[field] = value
        else:
            meta.pop(data.draw(st.sampled_from(sorted(meta))), None)
    path = tmp_path / f"m.{suffix}"
    if suffix == "pt":
        torch.save({"metadata": meta, "tensors": tensors}, path)
    else:
        save_file(tensors, str(path), metadata=meta)
    check(load_bases, path, InterbasisError, list)


# ------------------------------------------------------------------------- checkpoints
def _tiny_run(folder: Path) -> tuple[Path, Any]:
    """A training checkpoint of a tiny MLP, written by the run directory's own writer."""
    import torch

    from experiments.mlp import MLP, MLPConfig
    from experiments.run_dir import RunDir

    model = MLP(MLPConfig(d_in=2, d_hidden=[3], d_out=2, seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    run = RunDir(folder, {"model": "mlp", "steps": 10}, [])
    run.start()
    run.step = 5
    return run.save(model, opt), (model, opt)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    path, _ = _tiny_run(tmp_path_factory.mktemp("run"))
    return Files({"pt": path.read_bytes()})


def _restore(path: Path) -> Any:
    """Resume a fresh tiny run from ``path`` (the run directory's reader)."""
    import torch

    from experiments.mlp import MLP, MLPConfig
    from experiments.run_dir import RunDir

    model = MLP(MLPConfig(d_in=2, d_hidden=[3], d_out=2, seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = RunDir(path.parent / "resumed", {"model": "mlp", "steps": 10}, [])
    run.restore(path, model, opt)
    return run


def _checkpoint_readers() -> list[tuple[Callable[[Path], Any], type]]:
    from torch import nn

    from experiments.checkpoint_io import load_checkpoint, read_training_checkpoint
    from experiments.run_dir import RunDir

    return [(load_checkpoint, nn.Module), (read_training_checkpoint, dict), (_restore, RunDir)]


@FUZZ
@given(data=st.data())
def test_checkpoint_readers_survive_byte_mutations(
    checkpoint_file: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    from interbasis import InterbasisError

    path = tmp_path / "step_0000005.pt"
    path.write_bytes(data.draw(byte_mutation(checkpoint_file["pt"])))
    for read, kind in _checkpoint_readers():
        check(read, path, InterbasisError, kind)


ODD_ENTRIES: list[Any] = [None, "x", 7, -1, True, [], {}, {"kind": "mlp", "config": {}}, b"\x80"]


@FUZZ
@given(data=st.data())
def test_checkpoint_readers_survive_edited_entries(
    checkpoint_file: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    """Entries of the checkpoint dict (and of its model spec, state dict and ``extra``) dropped
    or replaced by values of the wrong type or shape, then saved again with ``torch.save``."""
    import pickle

    import torch

    from interbasis import InterbasisError

    obj = torch.load(io.BytesIO(checkpoint_file["pt"]), weights_only=True)
    extra = pickle.loads(obj["extra"])
    places: dict[str, dict[str, Any]] = {
        "top": obj,
        "spec": obj["model"],
        "config": obj["model"]["config"],
        "state": obj["model_state"],
        "extra": extra,
    }
    for _ in range(data.draw(st.integers(1, 3))):
        where = places[data.draw(st.sampled_from(sorted(places)))]
        if not where:  # emptied by an earlier edit
            continue
        key = data.draw(st.sampled_from(sorted(where, key=str)))
        action = data.draw(st.sampled_from(["drop", "replace", "reshape", "retype"]))
        value = where.pop(key)
        if action == "replace":
            where[key] = data.draw(st.sampled_from(ODD_ENTRIES))
        elif action in ("reshape", "retype") and isinstance(value, torch.Tensor):
            where[key] = value.reshape(-1)[:-1] if action == "reshape" else value.long()
        elif action != "drop":
            where[key] = value
    obj["extra"] = pickle.dumps(extra)
    path = tmp_path / "step_0000005.pt"
    torch.save(obj, path)
    for read, kind in _checkpoint_readers():
        check(read, path, InterbasisError, kind)


@pytest.fixture(scope="module")
def rib_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A small TransformerLens-style state dict with its rib ``config.yaml``."""
    import torch
    import yaml

    from experiments.checkpoint_io import read_rib_config
    from experiments.transformer import Transformer, TransformerConfig

    config = read_rib_config(
        Path(__file__).resolve().parent.parent / "experiments/checkpoints/rib_modadd_seed0"
    )
    small = {**config["model"], "d_model": 8, "d_head": 4, "n_heads": 2, "d_mlp": 16}
    model = Transformer(TransformerConfig.from_dict(small))
    folder = tmp_path_factory.mktemp("rib")
    torch.save(model.state_dict(), folder / "model.pt")
    return Files(
        {
            "pt": (folder / "model.pt").read_bytes(),
            "yaml": yaml.safe_dump({**config, "model": small}).encode(),
        }
    )


@FUZZ
@given(data=st.data(), which=st.sampled_from(["pt", "yaml"]))
def test_rib_checkpoint_reader_survives_mutations(
    rib_files: dict[str, bytes], tmp_path: Path, data: st.DataObject, which: str
) -> None:
    """The TransformerLens state dict or its ``config.yaml`` mutated (the other one valid)."""
    from torch import nn

    from experiments.checkpoint_io import load_checkpoint
    from interbasis import InterbasisError

    files = {"pt": rib_files["pt"], "yaml": rib_files["yaml"]}
    mutate = byte_mutation if which == "pt" else text_mutation
    files[which] = data.draw(mutate(files[which]))
    (tmp_path / "model.pt").write_bytes(files["pt"])
    (tmp_path / "config.yaml").write_bytes(files["yaml"])
    check(load_checkpoint, tmp_path / "model.pt", InterbasisError, nn.Module)
