"""The GGUF reader of the conversion (mesh.gguf_file) against files the `gguf` package's own writer makes: every
metadata type the conversion meets, and tensors plain and quantized, found where the alignment puts them."""

from pathlib import Path

import numpy as np
import pytest

from mesh.gguf_file import GgufFormatError, read_gguf


def _write(path: Path, tensors: dict[str, "np.ndarray[object, np.dtype[np.float32]]"], q8: bool = False) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 100_000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("tokenizer.chat_template", "{{ messages }} ✓")
    writer.add_array("tokenizer.ggml.tokens", ["a", "Ġb", "<|im_end|>"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 3])
    for name, values in tensors.items():
        if q8:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_metadata_of_every_kind_reads_back_as_written(tmp_path: Path) -> None:
    _write(tmp_path / "m.gguf", {"norm.weight": np.arange(3, dtype=np.float32)})

    metadata = read_gguf(tmp_path / "m.gguf").metadata

    assert metadata["general.architecture"] == "llama"
    assert metadata["llama.block_count"] == 2 and metadata["llama.rope.freq_base"] == 100_000.0
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert metadata["tokenizer.chat_template"] == "{{ messages }} ✓"
    assert metadata["tokenizer.ggml.tokens"] == ["a", "Ġb", "<|im_end|>"]
    assert metadata["tokenizer.ggml.token_type"] == [1, 1, 3]


def test_tensors_come_back_outermost_dimension_first_plain_and_quantized(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((3, 64)).astype(np.float32)
    vector = rng.standard_normal(5).astype(np.float32)
    _write(tmp_path / "plain.gguf", {"m.weight": matrix, "v.weight": vector})
    _write(tmp_path / "q8.gguf", {"m.weight": matrix}, q8=True)

    plain = read_gguf(tmp_path / "plain.gguf")
    quantized = read_gguf(tmp_path / "q8.gguf")

    by_name = {t.name: plain.tensor_array(t) for t in plain.tensors}
    assert np.array_equal(by_name["m.weight"], matrix) and np.array_equal(by_name["v.weight"], vector)
    (q8,) = quantized.tensors
    assert q8.dims == (64, 3)
    assert np.allclose(quantized.tensor_array(q8), matrix, atol=0.05)


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(64))

    with pytest.raises(GgufFormatError, match="not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")
