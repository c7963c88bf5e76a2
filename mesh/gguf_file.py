"""The parts of a GGUF file the conversion reads: its key-value metadata and where each tensor's bytes are.

The `gguf` package's own reader builds numpy views for every item of every metadata array as it opens a file;
a tokenizer's 49,152 tokens and 48,900 merges made opening SmolLM2's file take 2-6 s of a conversion that is
otherwise a few seconds, paid on every fresh CI machine. The format is simple enough to read directly
(little-endian throughout): a header (magic `GGUF`, version, tensor count, metadata count), the metadata as
key, type, value, then per tensor its name, dimensions, element type and offset, then the tensor data, aligned
to `general.alignment` bytes (32 when absent). Tensor bytes are memory-mapped, not read; decoding them stays
with `gguf.quants`.
"""

import mmap
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
STRING_TYPE = 8
ARRAY_TYPE = 9
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
"""GGUF's metadata value types with a fixed size, as struct formats (8 is a string, 9 an array)."""


class GgufFormatError(ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True)
class GgufTensor:
    """One tensor's place in the file: `dims` innermost first, as GGUF writes them."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    """Bytes from the start of the file."""

    @property
    def rows(self) -> int:
        count = 1
        for dim in self.dims[1:]:
            count *= dim
        return count


@dataclass(frozen=True)
class GgufFile:
    metadata: Mapping[str, Any]
    tensors: tuple[GgufTensor, ...]
    path: Path

    def tensor_array(self, tensor: GgufTensor) -> "np.ndarray[Any, Any]":
        """The tensor as float32, its dimensions outermost first: a matrix is (out, in), as torch's Linear has it."""
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        try:
            qtype = GGMLQuantizationType(tensor.ggml_type)
            block_size, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as exc:
            raise GgufFormatError(f"tensor {tensor.name}: unknown element type {tensor.ggml_type}") from exc
        if tensor.dims[0] % block_size:
            raise GgufFormatError(f"tensor {tensor.name}: rows of {tensor.dims[0]} split no {block_size}-blocks")
        row_bytes = tensor.dims[0] // block_size * type_size
        raw = np.fromfile(self.path, dtype=np.uint8, count=tensor.rows * row_bytes, offset=tensor.offset)
        if raw.size != tensor.rows * row_bytes:
            raise GgufFormatError(f"tensor {tensor.name}: the file ends inside it")
        values = dequantize(raw.reshape(tensor.rows, row_bytes), qtype)
        return np.ascontiguousarray(values.reshape(tuple(reversed(tensor.dims))), dtype=np.float32)


def read_gguf(path: Path) -> GgufFile:
    """The metadata and tensor directory of the GGUF file at `path`."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        if cursor.take(4) != MAGIC:
            raise GgufFormatError(f"{path.name} is not a GGUF file")
        version, tensor_count, metadata_count = cursor.unpack("<IQQ")
        if version not in SUPPORTED_VERSIONS:
            raise GgufFormatError(f"{path.name}: GGUF version {version}, this reader knows {SUPPORTED_VERSIONS}")
        metadata: dict[str, Any] = {}
        for _ in range(metadata_count):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.unpack("<I")[0])
        infos = []
        for _ in range(tensor_count):
            name = cursor.string()
            (n_dims,) = cursor.unpack("<I")
            dims = cursor.unpack(f"<{n_dims}Q")
            ggml_type, offset = cursor.unpack("<IQ")
            infos.append((name, tuple(int(d) for d in dims), int(ggml_type), int(offset)))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = -(-cursor.position // alignment) * alignment
    tensors = tuple(GgufTensor(name, dims, kind, data_start + offset) for name, dims, kind, offset in infos)
    return GgufFile(metadata=metadata, tensors=tensors, path=path)


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self._data = data
        self.position = 0

    def take(self, size: int) -> bytes:
        chunk = self._data[self.position : self.position + size]
        if len(chunk) != size:
            raise GgufFormatError("the file ends inside its header")
        self.position += size
        return chunk

    def unpack(self, layout: str) -> tuple[Any, ...]:
        size = struct.calcsize(layout)
        try:
            values = struct.unpack_from(layout, self._data, self.position)
        except struct.error as exc:
            raise GgufFormatError("the file ends inside its header") from exc
        self.position += size
        return values

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        return self.take(length).decode("utf-8")

    def value(self, kind: int) -> Any:
        if kind == STRING_TYPE:
            return self.string()
        if kind == ARRAY_TYPE:
            item_kind, count = self.unpack("<IQ")
            if item_kind in _SCALARS:
                return list(self.unpack(f"<{count}{_SCALARS[item_kind][1]}"))
            read: Callable[[], Any] = self.string if item_kind == STRING_TYPE else lambda: self.value(item_kind)
            return [read() for _ in range(count)]
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])[0]
        raise GgufFormatError(f"unknown metadata value type {kind}")
