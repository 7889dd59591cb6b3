"""Basis.save / Basis.load round trip, format checks."""

from __future__ import annotations

import pytest
import torch
from nets import mlp

from interbasis import Basis, FormatError, build_bases, load_bases, save_bases
from interbasis.errors import WriteError


@pytest.fixture(scope="module")
def bases() -> list[Basis]:
    net = mlp([3, 5, 4])
    return build_bases(
        net, torch.randn(50, 3, dtype=torch.float64), ["0", "2", "output"], progress=False
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip(bases: list[Basis], tmp_path, suffix: str) -> None:
    path = bases[1].save(tmp_path / f"b{suffix}")
    back = Basis.load(path)
    assert (back.name, back.has_constant, back.kind) == ("2", True, "interaction")
    for field in ("C", "C_pinv", "eigenvalues", "gram_eigenvalues", "mean"):
        assert torch.equal(
            getattr(back, field),
            getattr(bases[1], field),
        ) or torch.allclose(
            getattr(back, field), getattr(bases[1], field), equal_nan=True, rtol=0, atol=0
        )
    many = load_bases(save_bases(bases, tmp_path / f"all{suffix}"))
    assert [b.name for b in many] == ["0", "2", "output"]
    assert not many[-1].has_constant and many[-1].kind == "neuron"


def test_foreign_files_are_rejected(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FormatError, match="not a basis file"):
        Basis.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(FormatError, match="not a basis file"):
        Basis.load(tmp_path / "junk.safetensors")
    torch.save(
        {"metadata": {"format": "interbasis.Basis", "version": "99"}, "tensors": {}},
        tmp_path / "v.pt",
    )
    with pytest.raises(FormatError, match="version '99'"):
        Basis.load(tmp_path / "v.pt")
    with pytest.raises(FileNotFoundError):
        Basis.load(tmp_path / "missing.pt")


def test_write_is_atomic(bases: list[Basis], tmp_path, monkeypatch) -> None:
    with pytest.raises(WriteError, match=r"no_such_dir.*does not exist"):
        bases[0].save(tmp_path / "no_such_dir" / "b.safetensors")
    assert list(tmp_path.iterdir()) == []
    target = tmp_path / "b.safetensors"
    bases[0].save(target)
    before = target.read_bytes()

    def fail_halfway(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", fail_halfway)
    with pytest.raises(WriteError, match=r"b\.safetensors.*disk full"):
        bases[1].save(target)
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temporary left


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m, t: t.pop("1.C_pinv"), r"basis 1 \('2'\) has no float64 tensor 'C_pinv'"),
        (lambda m, t: t.update({"0.mean": t["0.mean"].float()}), r"basis 0 \('0'\).*'mean'"),
        (lambda m, t: t.update({"1.C": t["1.C"][:-1]}), r"basis 1 \('2'\) has inconsistent shapes"),
        (lambda m, t: t.update({"2.eigenvalues": t["2.eigenvalues"][:1]}), r"basis 2 \('output'\)"),
        (lambda m, t: m.update(bases="[1, 2"), r"metadata 'bases' is missing or not JSON"),
        (lambda m, t: m.pop("bases"), r"metadata 'bases' is missing"),
        (
            lambda m, t: m.update(bases='[{"name": "0", "has_constant": 1, "kind": "pca"}]'),
            r"basis 0 header must be",
        ),
        (
            lambda m, t: m.update(bases='[{"name": "0", "has_constant": true, "kind": "rib"}]'),
            r"basis 0 header must be",
        ),
    ],
)
def test_read_bases_file_names_the_bad_field(bases: list[Basis], tmp_path, edit, message) -> None:
    """Edited files raise FormatError naming the basis and field (they used to give raw
    KeyError / JSONDecodeError, or a Basis whose shapes do not fit)."""
    from interbasis.basis import FORMAT_NAME, FORMAT_VERSION
    from interbasis.io import read_bases_file

    path = save_bases(bases, tmp_path / "b.pt")
    blob = torch.load(path, weights_only=True)
    edit(blob["metadata"], blob["tensors"])
    torch.save(blob, path)
    with pytest.raises(FormatError, match=message):
        read_bases_file(path, FORMAT_NAME, FORMAT_VERSION)
    fields = read_bases_file(save_bases(bases, tmp_path / "ok.pt"), FORMAT_NAME, FORMAT_VERSION)
    assert [Basis(**f).name for f in fields] == ["0", "2", "output"]


def test_load_bases_uses_the_checked_reader(bases: list[Basis], tmp_path) -> None:
    path = save_bases(bases, tmp_path / "b.pt")
    blob = torch.load(path, weights_only=True)
    blob["tensors"].pop("1.C_pinv")
    torch.save(blob, path)
    with pytest.raises(FormatError, match="'C_pinv'"):
        load_bases(path)  # today: KeyError '1.C_pinv'


def test_read_bases_file_missing_file_names_the_path(tmp_path) -> None:
    from interbasis.io import read_bases_file

    with pytest.raises(FileNotFoundError, match=r"no basis file at .*nothing\.pt"):
        read_bases_file(tmp_path / "nothing.pt", "interbasis.Basis", 1)
