"""The default model's cache folder (issue 16): a damaged, truncated or missing file is found and
converted again, an unwritable cache fails in one line, and concurrent first loads do not collide."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

import decodekit
from decodekit import models
from decodekit.core import backend
from decodekit.errors import ModelCacheError

pytestmark = pytest.mark.realmodel
PROMPT = "What is the capital of France? Answer in one word."
MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def greedy_tokens(model, tokenizer) -> list[int]:
    ids = decodekit.models.chat_ids(tokenizer, PROMPT)
    with torch.inference_mode():
        return decodekit.generate(model, ids, "greedy", max_new_tokens=16).sequences[0].tolist()


@attrs.frozen(kw_only=True)
class IntactCache:
    folder: Path  # a copy of the converted folder, checked against its manifest by the load that made it
    tokens: list[int]  # the greedy answer to PROMPT from the intact model


@pytest.fixture(scope="session")
def intact_cache(tmp_path_factory, default_model_fp32) -> IntactCache:
    model, tokenizer = default_model_fp32
    folder = models._converted_dir(models.gguf_path())
    copy = tmp_path_factory.mktemp("intact") / folder.name
    shutil.copytree(folder, copy)
    return IntactCache(folder=copy, tokens=greedy_tokens(model, tokenizer))


@pytest.fixture
def cache_copy(tmp_path, monkeypatch, intact_cache) -> Path:
    """DECODEKIT_CACHE pointed at a fresh copy of the intact cache; returns the converted folder in it."""
    root = tmp_path / "cache"
    folder = root / intact_cache.folder.name
    shutil.copytree(intact_cache.folder, folder)
    monkeypatch.setenv("DECODEKIT_CACHE", str(root))
    assert models._converted_dir(models.gguf_path()) == folder
    return folder


# Each fault damages the converted folder and returns what the next load must report.


def zero_4mib_in_the_middle(folder: Path) -> str:
    path = folder / "model.safetensors"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2 - 2 * MiB)
        f.write(bytes(4 * MiB))
    assert path.stat().st_size == size
    return "model.safetensors: sha256 differs from the manifest"


def truncate(path: Path) -> str:
    size = path.stat().st_size
    os.truncate(path, size // 2)
    return f"{path.name} is {size // 2} bytes, the manifest says {size}"


def truncate_weights(folder: Path) -> str:
    return truncate(folder / "model.safetensors")


def delete_weights(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    return "model.safetensors missing"


def truncate_tokenizer(folder: Path) -> str:
    return truncate(folder / "tokenizer.json")


FAULTS = [zero_4mib_in_the_middle, truncate_weights, delete_weights, truncate_tokenizer]


@pytest.mark.parametrize("damage", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_a_damaged_cache_is_converted_again_and_answers_as_the_intact_one(
        cache_copy, intact_cache, capfd, monkeypatch, damage):
    found = damage(cache_copy)
    model, tokenizer = models.load_default()
    err = capfd.readouterr().err
    assert f"decodekit: the converted default model in {cache_copy} is damaged ({found}); converting it again" in err
    assert greedy_tokens(model, tokenizer) == intact_cache.tokens
    # Swapped in place, nothing left beside it, and known intact in this process without hashing again.
    assert sorted(p.name for p in cache_copy.parent.iterdir()) == [models.LOCK_FILE, cache_copy.name]
    monkeypatch.setattr(models, "_sha256", lambda path: pytest.fail(f"{path} hashed again"))
    assert models._damage(cache_copy, models.gguf_path()) is None


def test_a_cache_without_a_manifest_is_found_damaged(cache_copy):
    # A v2 folder converted before manifests existed, or one whose manifest was lost.
    (cache_copy / models.MANIFEST).unlink()
    assert models._damage(cache_copy, models.gguf_path()) == "decodekit.json missing"
    (cache_copy / models.MANIFEST).write_text('{"source": "x", "seconds": 13.0}')
    assert "no file manifest" in models._damage(cache_copy, models.gguf_path())


def test_an_unwritable_cache_fails_in_one_line_before_converting(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "cache"
    monkeypatch.setenv("DECODEKIT_CACHE", str(root))
    monkeypatch.setattr(backend, "load_gguf_dense", lambda path: pytest.fail("converted into an unwritable cache"))
    with pytest.raises(ModelCacheError) as caught:
        models.load_default()
    message = str(caught.value)
    assert "\n" not in message and "Not a directory" in message and "DECODEKIT_CACHE" in message
    assert message.startswith(f"the default model must be converted once into {root / models._converted_dir(models.gguf_path()).name}, "
                              f"but the model cache {root} is not writable")


def test_the_cli_reports_an_unwritable_cache_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "cache"
    done = subprocess.run([sys.executable, "-m", "decodekit.cli", "generate", "Hi", "--max-new-tokens", "2"],
                          env={**os.environ, "DECODEKIT_CACHE": str(root)}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "converting" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("decodekit: error:")]
    assert len(errors) == 1 and str(root) in errors[0] and "DECODEKIT_CACHE" in errors[0], done.stderr


def test_an_intact_cache_that_cannot_be_written_still_loads_but_cannot_be_repaired(cache_copy):
    # As root no permission bit stops a write; a directory where the lock file goes does.
    (cache_copy.parent / models.LOCK_FILE).mkdir()
    model, tokenizer = models.load_default()
    assert model.config.num_hidden_layers == 30
    delete_weights(cache_copy)
    with pytest.raises(ModelCacheError) as caught:
        models.load_default()
    message = str(caught.value)
    assert "\n" not in message and "DECODEKIT_CACHE" in message and "Is a directory" in message
    assert f"{cache_copy} is damaged (model.safetensors missing)" in message


def test_two_processes_loading_an_empty_cache_both_succeed_and_convert_once(tmp_path):
    root = tmp_path / "cache"
    load = "import decodekit.models as m; model, _ = m.load_default(); assert model.config.num_hidden_layers == 30"
    env = {**os.environ, "DECODEKIT_CACHE": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", load], env=env, cwd=REPO, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("decodekit: converting the default model" in err for err in errs) == 1, errs
    name = models._converted_dir(models.gguf_path()).name  # this process's DECODEKIT_CACHE: only the name counts
    assert sorted(p.name for p in root.iterdir()) == [models.LOCK_FILE, name]
    assert models._damage(root / name, models.gguf_path()) is None
