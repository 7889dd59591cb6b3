"""Basis.save / Basis.load round trip, format checks."""

from __future__ import annotations

import pytest
import torch
from nets import mlp

from interbasis import Basis, FormatError, build_bases, load_bases, save_bases


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
    with pytest.raises(FormatError, match="version 99"):
        Basis.load(tmp_path / "v.pt")
    with pytest.raises(FileNotFoundError):
        Basis.load(tmp_path / "missing.pt")


def test_write_is_atomic(bases: list[Basis], tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError):
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
    with pytest.raises(OSError, match="disk full"):
        bases[1].save(target)
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temporary left
