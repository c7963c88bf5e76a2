"""Tiny Llama models generated on this machine, so a real Petals swarm can run where no hub download can.

Each model is a randomly initialised `LlamaForCausalLM` (fixed seed) with a byte-level BPE tokenizer trained
here on a fixed corpus that includes multi-byte UTF-8 text, saved in the standard Hugging Face layout
(config.json, model.safetensors, tokenizer files). Nothing downstream treats them specially: servers, clients
and transformers load them by path like any other checkpoint.

Generation is idempotent: a model directory carries the fingerprint of the recipe that made it, and a
directory with the current fingerprint is reused as it is. Changing a recipe (or the libraries that
realise it) changes the fingerprint, and the model is regenerated.
"""

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from protocol.catalog import ModelSpec

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "far-mesh-recipe.json"


@dataclass(frozen=True)
class TinyModelRecipe:
    """Everything that determines a tiny model's files."""

    name: str
    num_blocks: int
    hidden_size: int = 64
    intermediate_size: int = 128
    num_attention_heads: int = 4
    vocab_size: int = 384
    max_position_embeddings: int = 256
    # Wider than Llama's 0.02, so that greedy decoding of a random model does not collapse onto one token.
    initializer_range: float = 0.2
    seed: int = 0

    @property
    def dht_prefix(self) -> str:
        return self.name


TINY_MODELS: tuple[TinyModelRecipe, ...] = (
    TinyModelRecipe(name="far-tiny-llama-4", num_blocks=4, seed=4),
    TinyModelRecipe(name="far-tiny-llama-6", num_blocks=6, seed=6),
)

CORPUS: tuple[str, ...] = (
    "The mesh streams tokens from many small servers, and every server is paid for the blocks it served.",
    "A request walks through the gateway, the queue, a worker and the swarm, then back as server-sent events.",
    "Petals splits a transformer into spans of blocks; hivemind's DHT tells a client who holds which span.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 $FAR 0.0001 per token.",
    "Café, naïve, façade, Grüße aus Köln, señor, smørrebrød, œuvre, Ångström.",
    "Привет, мир! Как дела? Сеть генерирует токены.",
    "日本語のテキストも少し含めます。東京、大阪、京都。",
    "中文文本：你好，世界。分布式推理。",
    "Ελληνικά: γεια σου κόσμε. العربية: مرحبا بالعالم. हिन्दी: नमस्ते दुनिया।",
    "Emoji survive byte-level BPE: 🚀 🌍 ✨ 🤖 ⚡ — and so do dashes – quotes “like these” and €£¥.",
    "def generate(prompt: str) -> str:\n    return prompt + ' and more'\n",
)
"""The tokenizer's training text; multi-byte characters make half-character decoding a case tests can hit."""

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


class TinyModelError(RuntimeError):
    """A tiny model could not be generated or its directory is unusable."""


def fingerprint(recipe: TinyModelRecipe) -> str:
    """A digest of the recipe, the corpus and the library versions that turn them into files."""
    import tokenizers
    import torch
    import transformers

    material = {
        "recipe": asdict(recipe),
        "corpus": CORPUS,
        "special_tokens": SPECIAL_TOKENS,
        "versions": [torch.__version__, transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def model_path(cache_dir: Path, recipe: TinyModelRecipe) -> Path:
    return models_dir(cache_dir) / recipe.name


def spec_for(recipe: TinyModelRecipe, path: Path) -> ModelSpec:
    return ModelSpec(model_id=recipe.name, source=str(path), dht_prefix=recipe.dht_prefix)


def ensure_tiny_models(cache_dir: Path, recipes: tuple[TinyModelRecipe, ...] = TINY_MODELS) -> tuple[ModelSpec, ...]:
    """Generate each recipe's model under `<cache_dir>/models/<name>` unless it is already there; return specs."""
    return tuple(spec_for(recipe, ensure_tiny_model(cache_dir, recipe)) for recipe in recipes)


def ensure_tiny_model(cache_dir: Path, recipe: TinyModelRecipe) -> Path:
    """The model's directory, generated first when missing or made by another recipe.

    The model is written to a temporary sibling directory and renamed into place, so a concurrent reader (or a
    second generator) sees either no model or a complete one.
    """
    target = model_path(cache_dir, recipe)
    expected = fingerprint(recipe)
    if _fingerprint_of(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        write_tiny_model(recipe, staging)
        (staging / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": expected, "recipe": asdict(recipe)}))
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same model first; theirs is as good as ours.
            if _fingerprint_of(target) != expected:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("tiny model generated name=%s blocks=%d path=%s", recipe.name, recipe.num_blocks, target)
    return target


def _fingerprint_of(path: Path) -> str | None:
    try:
        return str(json.loads((path / FINGERPRINT_FILE).read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


def write_tiny_model(recipe: TinyModelRecipe, directory: Path) -> None:
    """Train the tokenizer and initialise the model of `recipe`, saving both into `directory`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(CORPUS), vocab_size=recipe.vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS.values())
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **SPECIAL_TOKENS)
    tokenizer.model_max_length = recipe.max_position_embeddings
    tokenizer.save_pretrained(directory)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_blocks,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_attention_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        initializer_range=recipe.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        torch_dtype="float32",
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(directory, safe_serialization=True)
    if not (directory / "model.safetensors").is_file():
        raise TinyModelError(f"{recipe.name}: transformers did not write model.safetensors into {directory}")
