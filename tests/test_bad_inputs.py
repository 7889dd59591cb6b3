"""The bad-input inventory (issue 19): each row is one bad input to the public API.

Every row asserts that the call raises *our* exception type (``graphs.errors`` /
``interbasis.errors``) and that the message names the offending argument, node, layer, shape,
value or path. To add a row, append a :class:`Case` to ``CASES``: an id, a callable that gets a
fresh temporary folder, the exception type, and a substring the message must contain.
Rows that need a fix in a file outside this helper's reach carry ``NEEDS_FIX`` (a strict
xfail: once the fix lands the row passes, the xfail turns into a failure, and the mark goes).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import networkx as nx
import numpy as np
import pytest
import torch

from graphs import (
    GraphFormatError,
    GraphWriteError,
    InteractionGraph,
    InvalidGraphError,
    ModuleSearchError,
    NodeLayer,
    UnknownNodeError,
    find_modules,
    save_npz,
    write_graphml,
    write_json,
)
from graphs.export import load_npz, read_graphml, read_json
from interbasis import FormatError, ShapeError, load_bases
from interbasis.errors import WriteError
from interbasis.io import atomic_write, read_bases_file


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(tmp)`` must raise ``error`` with ``names`` in its message."""

    id: str
    call: Callable[[Path], Any]
    error: type[Exception]
    names: str
    marks: tuple[Any, ...] = ()


def NEEDS_FIX(where: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"needs the issue-19 fix in {where}")


# ------------------------------------------------------------------------- fixtures
def layer(name: str, size: int, constant: bool = False) -> NodeLayer:
    const = np.zeros(size, dtype=bool)
    eig = np.linspace(2.0, 1.0, size)
    if constant:
        const[0], eig[0] = True, np.nan
    return NodeLayer(name, size, eig, const, np.ones(size))


def graph() -> InteractionGraph:
    """``a`` (3 nodes, node 0 constant) -> ``b`` (3 nodes)."""
    e = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 0.5], [0.0, 0.2, 4.0]])
    return InteractionGraph([layer("a", 3, True), layer("b", 3)], [e], {"model": "table"})


def edited_graphml(tmp: Path, old: str, new: str, count: int = 1) -> Path:
    path = tmp / "g.graphml"
    write_graphml(graph(), path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))
    return path


def duplicated_edge_graphml(tmp: Path) -> Path:
    path = tmp / "g.graphml"
    write_graphml(graph(), path)
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if 'source="a:1" target="b:0"' in line)
    lines.insert(k + 1, lines[k].replace(">1.0<", ">7.5<"))
    path.write_text("\n".join(lines))
    return path


def edited_json(tmp: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    path = tmp / "g.json"
    write_json(graph(), path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def edited_npz(tmp: Path, **arrays: Any) -> Path:
    path = tmp / "g.npz"
    save_npz(graph().with_modules({"b:1": 0}), path)
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    np.savez(path, **{**stored, **arrays})
    return path


def bases_file(tmp: Path, edit: Callable[[dict[str, Any], dict[str, Any]], Any]) -> Path:
    """A valid one-basis ``.pt`` file (d = 2, with constant, n = 3), edited by ``edit``."""
    path = tmp / "b.pt"
    tensors = {
        "0.C": torch.eye(3, dtype=torch.float64),
        "0.C_pinv": torch.eye(3, dtype=torch.float64),
        "0.eigenvalues": torch.tensor([float("nan"), 2.0, 1.0], dtype=torch.float64),
        "0.gram_eigenvalues": torch.tensor([2.0, 1.0], dtype=torch.float64),
        "0.mean": torch.zeros(2, dtype=torch.float64),
    }
    meta = {
        "format": "interbasis.Basis",
        "version": "1",
        "bases": json.dumps([{"name": "h", "has_constant": True, "kind": "pca"}]),
    }
    edit(meta, tensors)
    torch.save({"metadata": meta, "tensors": tensors}, path)
    return path


def read_bases(path: Path) -> Any:
    return read_bases_file(path, "interbasis.Basis", 1)


def training_checkpoint(tmp: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A training checkpoint of a tiny MLP (written by the run directory), edited by ``edit``."""
    from experiments.mlp import MLP, MLPConfig
    from experiments.run_dir import RunDir

    model = MLP(MLPConfig(d_in=2, d_hidden=[3], d_out=2, seed=0))
    opt = torch.optim.AdamW(model.parameters())
    run = RunDir(tmp / "run", {"model": "mlp"}, [])
    run.start()
    path = run.save(model, opt)
    obj = torch.load(path, weights_only=True)
    edit(obj)
    torch.save(obj, path)
    return path


def load_checkpoint(path: Path) -> Any:
    from experiments.checkpoint_io import load_checkpoint as load

    return load(path)


def read_training_checkpoint(path: Path) -> Any:
    from experiments.checkpoint_io import read_training_checkpoint as read

    return read(path)


def restore(path: Path) -> Any:
    from experiments.mlp import MLP, MLPConfig
    from experiments.run_dir import RunDir

    model = MLP(MLPConfig(d_in=2, d_hidden=[3], d_out=2, seed=0))
    RunDir(path.parent.parent, {"model": "mlp"}, []).restore(
        path, model, torch.optim.AdamW(model.parameters())
    )


def metrics_file(tmp: Path, text: str) -> Any:
    from experiments.run_dir import read_metrics

    (tmp / "metrics.jsonl").write_text(text)
    return read_metrics(tmp)


def set_item(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def failing(target: str, error: Exception, call: Callable[[], Any]) -> Any:
    """``call()`` while ``target`` (a dotted name) raises ``error``: an OS failure we cannot
    provoke as root (a folder we may not write, a full disk)."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    with mock.patch(target, fail):
        return call()


def tsave(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def rib_dir(tmp: Path, config: str) -> Path:
    """A TransformerLens-style state dict with ``config.yaml`` beside it."""
    torch.save({"embed.W_E": torch.zeros(2, 2)}, tmp / "model.pt")
    (tmp / "config.yaml").write_text(config)
    return tmp


def call(function: str, *args: Any) -> Any:
    module, name = function.rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)(*args)


# ------------------------------------------------------------------------- the table
G = graph()
A, B = G.layers
ONES = {
    "eigenvalues": np.ones(3),
    "is_constant": np.zeros(3, bool),
    "activation_variance": np.ones(3),
}

CASES: list[Case] = [
    # --- InteractionGraph / NodeLayer
    Case("layer-size-bool", lambda t: NodeLayer("h", True, **ONES), InvalidGraphError, "True"),
    Case("layer-size-negative", lambda t: NodeLayer("h", -1, **ONES), InvalidGraphError, "-1"),
    Case("layer-name-empty", lambda t: NodeLayer("", 3, **ONES), InvalidGraphError, "''"),
    Case(
        "layer-eigenvalues-strings",
        lambda t: NodeLayer("h", 3, **{**ONES, "eigenvalues": np.array(["1", "2", "3"])}),
        InvalidGraphError,
        "eigenvalues",
    ),
    Case(
        "layer-eigenvalues-shape",
        lambda t: NodeLayer("h", 3, **{**ONES, "eigenvalues": np.ones(4)}),
        InvalidGraphError,
        "(4,)",
    ),
    Case(
        "layer-constant-not-node-0",
        lambda t: NodeLayer("h", 3, **{**ONES, "is_constant": np.array([0, 0, 1], bool)}),
        InvalidGraphError,
        "node 2",
    ),
    Case(
        "layer-variance-negative",
        lambda t: NodeLayer("h", 3, **{**ONES, "activation_variance": -np.ones(3)}),
        InvalidGraphError,
        "activation_variance",
    ),
    Case(
        "graph-edges-shape",
        lambda t: InteractionGraph([A, B], [np.ones((3, 2))]),
        InvalidGraphError,
        "'a' -> 'b'",
    ),
    Case(
        "graph-edges-nan",
        lambda t: InteractionGraph([A, B], [np.where(G.edges[0] > 0, np.nan, 0.0)]),
        InvalidGraphError,
        "NaN",
    ),
    Case(
        "graph-edges-negative",
        lambda t: InteractionGraph([A, B], [-G.edges[0]]),
        InvalidGraphError,
        "negative",
    ),
    Case(
        "graph-edges-on-constant",
        lambda t: InteractionGraph([A, B], [np.ones((3, 3))]),
        InvalidGraphError,
        "constant node",
    ),
    Case(
        "graph-edges-count",
        lambda t: InteractionGraph([A, B], []),
        InvalidGraphError,
        "need 1 edge matrices",
    ),
    Case(
        "graph-edges-not-a-list",
        lambda t: InteractionGraph([A, B], G.edges[0]),  # type: ignore[arg-type]
        InvalidGraphError,
        "edges must be a list",
    ),
    Case(
        "graph-duplicate-layer-names",
        lambda t: InteractionGraph([A, A], [np.zeros((3, 3))]),
        InvalidGraphError,
        "'a', 'a'",
    ),
    Case(
        "graph-metadata-list",
        lambda t: InteractionGraph([A, B], G.edges, [1]),  # type: ignore[arg-type]
        InvalidGraphError,
        "metadata",
    ),
    Case(
        "with-modules-string",
        lambda t: G.with_modules({"b:1": "x"}),
        InvalidGraphError,
        "node 'b:1'",
    ),
    Case("with-modules-bool", lambda t: G.with_modules({"b:1": True}), InvalidGraphError, "True"),
    Case(
        "with-modules-unknown-node",
        lambda t: G.with_modules({"zz:0": 1}),
        UnknownNodeError,
        "'zz:0'",
    ),
    Case(
        "with-modules-constant-node",
        lambda t: G.with_modules({"a:0": 1}),
        InvalidGraphError,
        "'a:0'",
    ),
    Case(
        "with-modules-below-minus-1", lambda t: G.with_modules({"b:2": -3}), InvalidGraphError, "-3"
    ),
    Case("locate-malformed", lambda t: G.locate("b-1"), UnknownNodeError, "'b-1'"),
    Case("prune-zero", lambda t: G.prune(0.0), InvalidGraphError, "fraction"),
    Case("prune-bool", lambda t: G.prune(True), InvalidGraphError, "True"),
    # --- graph writers
    Case(
        "save-npz-missing-folder",
        lambda t: save_npz(G, t / "missing" / "g.npz"),
        GraphWriteError,
        "missing",
    ),
    Case("write-graphml-to-a-folder", lambda t: write_graphml(G, t), GraphWriteError, "directory"),
    Case(
        "write-json-metadata-not-json",
        lambda t: write_json(InteractionGraph([A, B], G.edges, {"s": {1}}), t / "g.json"),
        InvalidGraphError,
        "JSON",
    ),
    Case(
        "save-empty-graph",
        lambda t: save_npz(InteractionGraph([], []), t / "g.npz"),
        InvalidGraphError,
        "empty graph",
    ),
    # --- graph readers
    Case(
        "graphml-duplicated-edge",
        lambda t: read_graphml(duplicated_edge_graphml(t)),
        GraphFormatError,
        "edge 'a:1' -> 'b:0' appears twice",
    ),
    Case(
        "graphml-duplicated-node",
        lambda t: read_graphml(
            edited_graphml(t, '<node id="b:2">', '<node id="b:1">')  # b:1 twice, b:2 never
        ),
        GraphFormatError,
        "node 'b:1' appears twice",
    ),
    Case(
        "graphml-foreign",
        lambda t: (
            nx.write_graphml(nx.path_graph(3), t / "p.graphml"),
            read_graphml(t / "p.graphml"),
        ),
        GraphFormatError,
        "'interbasis_format'",
    ),
    Case(
        "graphml-bad-boolean",
        lambda t: read_graphml(edited_graphml(t, ">false</data>", ">perhaps</data>")),
        GraphFormatError,
        "'perhaps'",
    ),
    Case(
        "graphml-edge-to-unknown-node",
        lambda t: read_graphml(edited_graphml(t, 'target="b:0"', 'target="c:0"')),
        GraphFormatError,
        "'c:0'",
    ),
    Case(
        "graphml-version",
        lambda t: read_graphml(edited_graphml(t, '_version">1<', '_version">7<')),
        GraphFormatError,
        "version 7",
    ),
    Case(
        "json-duplicated-link",
        lambda t: read_json(edited_json(t, lambda d: d["links"].append(d["links"][0]))),
        GraphFormatError,
        "appears twice",
    ),
    Case(
        "json-weight-string",
        lambda t: read_json(edited_json(t, lambda d: d["links"][0].update(weight="1.0"))),
        GraphFormatError,
        "weight='1.0'",
    ),
    Case(
        "json-not-json",
        lambda t: (t.joinpath("g.json").write_text("{"), read_json(t / "g.json")),
        GraphFormatError,
        "not a readable JSON",
    ),
    Case(
        "npz-not-npz",
        lambda t: (t.joinpath("g.npz").write_text("hello"), load_npz(t / "g.npz")),
        GraphFormatError,
        "g.npz",
    ),
    Case(
        "npz-fractional-modules",
        lambda t: load_npz(edited_npz(t, modules_1=np.array([-1, 0.5, 1]))),
        GraphFormatError,
        "modules",
    ),
    Case(
        "npz-missing-array",
        lambda t: load_npz(edited_npz(t, header=np.array('{"format": "interbasis.graph"}'))),
        GraphFormatError,
        "version",
    ),
    # --- find_modules
    Case("modules-epsilon-zero", lambda t: find_modules(G, 0.0), ModuleSearchError, "epsilon"),
    Case("modules-epsilon-negative", lambda t: find_modules(G, -1.0), ModuleSearchError, "-1.0"),
    Case("modules-epsilon-bool", lambda t: find_modules(G, True), ModuleSearchError, "True"),
    Case("modules-epsilon-string", lambda t: find_modules(G, "1e-3"), ModuleSearchError, "'1e-3'"),
    Case(
        "modules-epsilon-length",
        lambda t: find_modules(G, [1e-3, 1e-3]),
        ModuleSearchError,
        "2 entries",
    ),
    Case(
        "modules-method-unknown",
        lambda t: find_modules(G, method="louvain"),  # type: ignore[arg-type]
        ModuleSearchError,
        "'louvain'",
    ),
    Case(
        "modules-resolution-negative",
        lambda t: find_modules(G, method="leiden", resolution=-1.0),
        ModuleSearchError,
        "resolution",
    ),
    Case(
        "modules-quality-unknown",
        lambda t: find_modules(G, method="leiden", quality="cmp"),
        ModuleSearchError,
        "'cmp'",
    ),
    Case(
        "modules-exact-k3",
        lambda t: find_modules(G, method="exact", n_modules=3),
        ModuleSearchError,
        "3",
    ),
    Case(
        "modules-leiden-n-modules",
        lambda t: find_modules(G, method="leiden", n_modules=2),
        ModuleSearchError,
        "n_modules",
    ),
    Case(
        "modules-resolution-string",
        lambda t: find_modules(G, method="leiden", resolution="1"),  # type: ignore[arg-type]
        ModuleSearchError,
        "resolution",
    ),
    Case(
        "modules-resolution-bool",
        lambda t: find_modules(G, method="leiden", resolution=True),
        ModuleSearchError,
        "resolution",
    ),
    Case(
        "modules-min-size-bool",
        lambda t: find_modules(G, method="exact", min_size=True),
        ModuleSearchError,
        "min_size",
    ),
    Case(
        "modules-n-modules-bool",
        lambda t: find_modules(G, method="spectral", n_modules=True),
        ModuleSearchError,
        "n_modules",
    ),
    Case(
        "modules-seed-string",
        lambda t: find_modules(G, seed="x"),  # type: ignore[arg-type]
        ModuleSearchError,
        "seed",
    ),
    Case(
        "modules-not-a-graph",
        lambda t: find_modules("graph.graphml"),  # type: ignore[arg-type]
        ModuleSearchError,
        "InteractionGraph",
    ),
    # --- interbasis.io: basis files, atomic writes
    Case(
        "bases-missing-tensor",
        lambda t: read_bases(bases_file(t, lambda m, x: x.pop("0.C_pinv"))),
        FormatError,
        "'C_pinv'",
    ),
    Case(
        "bases-float32",
        lambda t: read_bases(bases_file(t, lambda m, x: x.update({"0.C": x["0.C"].float()}))),
        FormatError,
        "'C'",
    ),
    Case(
        "bases-shapes",
        lambda t: read_bases(
            bases_file(t, lambda m, x: x.update({"0.mean": torch.zeros(5).double()}))
        ),
        FormatError,
        "inconsistent shapes",
    ),
    Case(
        "bases-header-kind",
        lambda t: read_bases(bases_file(t, lambda m, x: m.update(bases='[{"name": "h"}]'))),
        FormatError,
        "basis 0 header",
    ),
    Case(
        "bases-version",
        lambda t: read_bases(bases_file(t, lambda m, x: m.update(version="9"))),
        FormatError,
        "'9'",
    ),
    Case(
        "bases-not-a-file-we-wrote",
        lambda t: (t.joinpath("b.pt").write_bytes(b"\x00" * 10), load_bases(t / "b.pt")),
        FormatError,
        "b.pt",
    ),
    Case(
        "load-bases-missing-tensor",
        lambda t: load_bases(bases_file(t, lambda m, x: x.pop("0.C_pinv"))),
        FormatError,
        "'C_pinv'",
    ),
    Case(
        "atomic-write-missing-folder",
        lambda t: atomic_write(t / "nope" / "f.bin", lambda p: None),
        WriteError,
        "nope",
    ),
    Case(
        "atomic-write-to-a-folder",
        lambda t: atomic_write(t, lambda p: None),
        WriteError,
        "directory",
    ),
    # --- checkpoints and run directories
    Case(
        "checkpoint-truncated",
        lambda t: load_checkpoint(training_checkpoint(t, lambda o: None).parent / "x.pt"),
        FormatError,
        "x.pt",
    ),
    Case(
        "checkpoint-missing-model-state",
        lambda t: load_checkpoint(training_checkpoint(t, lambda o: o.pop("model_state"))),
        FormatError,
        "state dict",
    ),
    Case(
        "checkpoint-bad-model-spec",
        lambda t: load_checkpoint(
            training_checkpoint(t, set_item("model", {"kind": "mlp", "config": {"d_in": "x"}}))
        ),
        FormatError,
        "d_in",
    ),
    Case(
        "checkpoint-int-weights",
        lambda t: load_checkpoint(
            training_checkpoint(
                t,
                lambda o: o["model_state"].update(
                    {k: v.long() for k, v in o["model_state"].items()}
                ),
            )
        ),
        FormatError,
        "dtype torch.int64",
    ),
    Case(
        "checkpoint-wrong-shape",
        lambda t: load_checkpoint(
            training_checkpoint(
                t,
                lambda o: o["model_state"].update({k: v[:1] for k, v in o["model_state"].items()}),
            )
        ),
        ShapeError,
        "has shape",
    ),
    Case(
        "training-checkpoint-step-bool",
        lambda t: read_training_checkpoint(training_checkpoint(t, set_item("step", True))),
        FormatError,
        "'step'",
    ),
    Case(
        "training-checkpoint-no-rng",
        lambda t: read_training_checkpoint(training_checkpoint(t, lambda o: o.pop("torch_rng"))),
        FormatError,
        "'torch_rng' is missing",
    ),
    Case(
        "restore-bad-rng-state",
        lambda t: restore(
            training_checkpoint(t, set_item("torch_rng", torch.zeros(3, dtype=torch.uint8)))
        ),
        FormatError,
        "RNG states",
    ),
    Case(
        "restore-bad-optimizer-state",
        lambda t: restore(training_checkpoint(t, set_item("optimizer_state", {"state": {}}))),
        FormatError,
        "optimizer state",
    ),
    Case(
        "metrics-corrupt-middle-line",
        lambda t: metrics_file(t, '{"step": 0}\nnot json\n{"step": 2}\n'),
        FormatError,
        "line 2",
    ),
    # --- more rows: every raise of the readers and writers above
    Case(
        "layer-is-constant-not-0-1",
        lambda t: NodeLayer("h", 3, **{**ONES, "is_constant": np.array([2, 0, 0])}),
        InvalidGraphError,
        "0/1",
    ),
    Case(
        "graph-layer-not-a-nodelayer",
        lambda t: InteractionGraph([A, "b"], [np.zeros((1, 3))]),  # type: ignore[list-item]
        InvalidGraphError,
        "NodeLayer",
    ),
    Case(
        "graph-modules-below-minus-1",
        lambda t: InteractionGraph([A, B], G.edges, {}, [np.full(3, -1), np.array([0, -5, 0])]),
        InvalidGraphError,
        "'b:1'",
    ),
    Case("with-modules-not-a-mapping", lambda t: G.with_modules(42), InvalidGraphError, "int"),
    Case(
        "write-graphml-not-a-graph",
        lambda t: write_graphml("g", t / "g.graphml"),  # type: ignore[arg-type]
        InvalidGraphError,
        "InteractionGraph",
    ),
    Case(
        "write-no-permission",
        lambda t: failing(
            "tempfile.mkstemp",
            PermissionError(13, "Permission denied"),
            lambda: save_npz(G, t / "g.npz"),
        ),
        GraphWriteError,
        "Permission denied",
    ),
    Case(
        "write-disk-full",
        lambda t: failing(
            "numpy.savez", OSError(28, "No space left on device"), lambda: save_npz(G, t / "g.npz")
        ),
        GraphWriteError,
        "No space left",
    ),
    Case(
        "npz-header-not-json",
        lambda t: load_npz(edited_npz(t, header=np.array("{not json"))),
        GraphFormatError,
        "header is not JSON",
    ),
    Case(
        "npz-metadata-not-object",
        lambda t: load_npz(
            edited_npz(
                t,
                header=np.array(
                    json.dumps(
                        {
                            "format": "interbasis.graph",
                            "version": 1,
                            "has_modules": False,
                            "layers": [{"name": "a", "size": 3}, {"name": "b", "size": 3}],
                            "metadata": [1],
                        }
                    )
                ),
            )
        ),
        GraphFormatError,
        "'metadata'",
    ),
    Case(
        "json-edge-skips-layers",
        lambda t: read_json(
            edited_json(t, lambda d: d["links"][0].update(source="b:1", target="a:1"))
        ),
        GraphFormatError,
        "'b:1' -> 'a:1'",
    ),
    Case(
        "graphml-key-type",
        lambda t: read_graphml(edited_graphml(t, 'attr.type="double"', 'attr.type="complex"')),
        GraphFormatError,
        "'complex'",
    ),
    Case(
        "graphml-undeclared-key",
        lambda t: read_graphml(edited_graphml(t, '<data key="n_index">', '<data key="n_rank">')),
        GraphFormatError,
        "'n_rank'",
    ),
    Case(
        "graphml-layers-not-json",
        lambda t: read_graphml(edited_graphml(t, '[{"name"', "[{name")),
        GraphFormatError,
        "'layers' is not JSON",
    ),
    Case(
        "read-bases-garbage",
        lambda t: (t.joinpath("b.pt").write_bytes(b"garbage"), read_bases(t / "b.pt")),
        FormatError,
        "b.pt",
    ),
    Case(
        "read-bases-foreign-format",
        lambda t: read_bases(bases_file(t, lambda m, x: m.update(format="other"))),
        FormatError,
        "no format tag",
    ),
    Case(
        "read-bases-tensors-not-a-dict",
        lambda t: (
            tsave(
                {
                    "metadata": {"format": "interbasis.Basis", "version": "1", "bases": "[]"},
                    "tensors": [1],
                },
                t / "b.pt",
            ),
            read_bases(t / "b.pt"),
        ),
        FormatError,
        "tensors not a dict",
    ),
    Case(
        "atomic-write-no-permission",
        lambda t: failing(
            "tempfile.mkstemp",
            PermissionError(13, "Permission denied"),
            lambda: atomic_write(t / "f.bin", lambda p: None),
        ),
        WriteError,
        "Permission denied",
    ),
    Case(
        "rib-config-not-yaml",
        lambda t: load_checkpoint(rib_dir(t, "model: [unclosed")),
        FormatError,
        "config.yaml",
    ),
    Case(
        "rib-config-no-model",
        lambda t: load_checkpoint(rib_dir(t, "dataset: {}")),
        FormatError,
        "no 'model' section",
    ),
    Case(
        "latest-checkpoint-none",
        lambda t: call("experiments.checkpoint_io.latest_checkpoint", t),
        FormatError,
        "no training checkpoints",
    ),
    Case(
        "load-checkpoint-two-files",
        lambda t: (tsave({}, t / "a.pt"), tsave({}, t / "b.pt"), load_checkpoint(t)),
        FormatError,
        "2 *.pt files",
    ),
    Case(
        "task-for-checkpoint-no-file",
        lambda t: call("experiments.checkpoint_io.task_for_checkpoint", t),
        FormatError,
        "0 *.pt files",
    ),
    Case(
        "training-checkpoint-version",
        lambda t: read_training_checkpoint(training_checkpoint(t, set_item("version", 2))),
        FormatError,
        "version 2",
    ),
    Case(
        "training-checkpoint-extra-not-pickle",
        lambda t: read_training_checkpoint(training_checkpoint(t, set_item("extra", b"junk"))),
        FormatError,
        "'extra'",
    ),
    Case(
        "training-checkpoint-extra-not-dict",
        lambda t: read_training_checkpoint(
            training_checkpoint(t, set_item("extra", pickle.dumps([1])))
        ),
        FormatError,
        "'extra' section is not a dict",
    ),
    Case(
        "training-checkpoint-negative-step",
        lambda t: read_training_checkpoint(training_checkpoint(t, set_item("step", -4))),
        FormatError,
        "step -4",
    ),
    Case(
        "npz-header-not-a-string",
        lambda t: load_npz(edited_npz(t, header=np.arange(3))),
        GraphFormatError,
        "'header' is not a JSON string",
    ),
    Case(
        "json-module-out-of-int64",
        lambda t: read_json(
            edited_json(
                t, lambda d: [n.update(module=10**30 * (k == 4)) for k, n in enumerate(d["nodes"])]
            )
        ),
        GraphFormatError,
        "out of the int64 range",
    ),
    Case(
        "json-eigenvalue-out-of-float64",
        lambda t: read_json(edited_json(t, lambda d: d["nodes"][4].update(eigenvalue=10**400))),
        GraphFormatError,
        "out of the float64 range",
    ),
    Case(
        "json-not-node-link",
        lambda t: read_json(edited_json(t, lambda d: d.update(links={}))),
        GraphFormatError,
        "not a node-link graph",
    ),
    Case(
        "checkpoint-neither-format",
        lambda t: load_checkpoint(tsave({"weights": torch.zeros(2)}, t / "w.pt")),
        FormatError,
        "neither a training checkpoint",
    ),
    Case(
        "training-checkpoint-foreign",
        lambda t: read_training_checkpoint(tsave({"weights": torch.zeros(2)}, t / "w.pt")),
        FormatError,
        "w.pt is not a training checkpoint",
    ),
    Case(
        "graphml-other-xml",
        lambda t: (t.joinpath("g.graphml").write_text("<svg/>"), read_graphml(t / "g.graphml")),
        GraphFormatError,
        "root <svg>",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_raises_our_error_naming_it(case: Case, tmp_path: Path) -> None:
    with pytest.raises(case.error) as info:
        case.call(tmp_path)
    assert case.names in str(info.value), f"{case.names!r} not in: {info.value}"


def test_ids_are_distinct() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
