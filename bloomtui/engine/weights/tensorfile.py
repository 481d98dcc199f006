"""Where each tensor's bytes lie in a checkpoint file, without reading the weights.

Two formats: safetensors (a JSON header, then raw data) and PyTorch's zip format (`torch.save` since 1.6),
whose `data.pkl` we unpickle with a whitelist that records storage keys instead of loading storages. Both
give `TensorRef`s (file, byte offset, dtype, shape), so one reader serves every layout and reading a block
touches only that block's bytes.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bloomtui.errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,  # quantised weights in folders written by `bloomtui prepare`
    "U8": torch.uint8,
    "F32": torch.float32,
    "F64": torch.float64,
}


# Pickles name legacy typed-storage classes; map them without touching torch's deprecated ones.
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class TensorRef:
    """A contiguous tensor stored at `offset` in `path`."""

    path: Path
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def index_file(path: Path) -> dict[str, TensorRef]:
    """Tensor refs of one checkpoint file, by its extension."""
    if path.suffix == ".safetensors":
        refs = _index_safetensors(path)
    elif path.suffix == ".bin":
        refs = _index_torch_zip(path)
    else:
        raise CheckpointError(f"{path}: unknown weight file type")
    size = path.stat().st_size
    for name, ref in refs.items():
        if ref.offset + ref.nbytes > size:
            raise CheckpointError(f"{path}: truncated ({name} ends past the end of the file)")
    return refs


def _index_safetensors(path: Path) -> dict[str, TensorRef]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (header length {header_len})")
            header = json.loads(f.read(header_len))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: bad safetensors header")
    base = 8 + header_len
    refs = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: {name} has unsupported dtype {meta.get('dtype')}")
        begin, end = meta["data_offsets"]
        ref = TensorRef(path, base + begin, dtype, tuple(meta["shape"]))
        if end - begin != ref.nbytes:
            raise CheckpointError(f"{path}: {name} byte range does not match its shape")
        refs[name] = ref
    return refs


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _PickledTensor:
    storage: _StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, size: Any, stride: Any, *_args: Any) -> _PickledTensor:
    return _PickledTensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: _PickledTensor, *_args: Any) -> _PickledTensor:
    return data


class _RefUnpickler(pickle.Unpickler):
    """Unpickles a state dict's structure only; anything but tensors and dicts is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
        return _StorageRef(str(key), dtype)


def _index_torch_zip(path: Path) -> dict[str, TensorRef]:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a zip-format PyTorch file (legacy torch.save format or damaged); "
            "re-save it with a current transformers"
        )
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            pkl_name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if pkl_name is None:
                raise CheckpointError(f"{path}: no data.pkl inside; not a PyTorch checkpoint")
            prefix = pkl_name[: -len("data.pkl")]
            state = _RefUnpickler(zf.open(pkl_name)).load()
            infos = {info.filename: info for info in zf.infolist()}
            data_starts: dict[str, int] = {}
            refs = {}
            for name, tensor in state.items():
                if not isinstance(tensor, _PickledTensor):
                    continue
                entry = f"{prefix}data/{tensor.storage.key}"
                if entry not in data_starts:
                    info = infos.get(entry)
                    if info is None:
                        raise CheckpointError(f"{path}: storage {entry} of {name} is missing")
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise CheckpointError(f"{path}: {entry} is compressed; cannot read it in place")
                    data_starts[entry] = _zip_data_start(raw, info)
                dtype = tensor.storage.dtype
                if not _is_contiguous(tensor.shape, tensor.stride):
                    raise CheckpointError(f"{path}: {name} is not stored contiguously")
                offset = data_starts[entry] + tensor.storage_offset * dtype.itemsize
                refs[str(name)] = TensorRef(path, offset, dtype, tensor.shape)
            return refs
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AttributeError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read the PyTorch checkpoint ({exc})") from None


def _zip_data_start(raw: Any, info: zipfile.ZipInfo) -> int:
    """Offset of an entry's data: the local header's own name/extra lengths can differ from the
    central directory's, so read them there."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"bad zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True
