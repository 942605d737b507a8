"""The model backend: the only code that imports transformers or knows its objects' insides.

A package of two modules: this one drives the model (forward, cache, loading), and `generation`
resolves model.generate's settings (generation config, logits processors, stopping criteria).

It drives a HuggingFace causal LM through its public forward (input_ids, position_ids, a 4-D
additive attention mask, the cache) and reads logits, and it is where models are loaded or built
(a local folder, the default model's GGUF, a config). Differences between transformers 5.x releases
live here and nowhere else:
- the cache keyword: `cache=` in recent releases, `past_key_values=` in earlier ones;
- `Cache.crop`: recent releases take a negative count of tokens to remove, earlier ones the length to keep.

A tensor-parallel model (`from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))` under
torchrun) is driven the same way: its weights are DTensors, but its forward takes and returns plain
tensors and its cache holds each rank's own heads as plain tensors, so cropping, compacting and moving
cache columns act on every rank's slice alike. What the backend adds is `ranks`: the process group whose
ranks run the forward together, which must make every decision alike (decodekit.core.ranks).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from pathlib import Path
from typing import Any, Sequence

import attrs
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (AttentionInterface, AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, GgufConfig,
                          PreTrainedModel)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from decodekit.core.ranks import Ranks, shared_ranks
from decodekit.errors import InputError, ModelNotSupportedError

# -- grouped-query attention over a custom mask ------------------------------------------------------
#
# transformers' "sdpa" attention, given a mask and more than one query token, repeats every key-value head
# for each query head that shares it (repeat_kv) before calling torch's scaled_dot_product_attention: a
# copy of the whole cache, every layer, every forward. decodekit's multi-token steps always carry a mask
# (trees, packed rows), so on a model with grouped-query attention (SmolLM2: 9 query heads over 3
# key-value heads) each step copied rows x cached x 3 keys and values, which grows with the batch and the
# cache. "decodekit_sdpa" computes the same attention without the copy: the query heads of each key-value
# head are stacked along the query axis, (B, H, T, D) -> (B, H_kv, groups * T, D), and the mask is repeated
# to match, as transformers already does for one query token. Everything else (no mask, one query token,
# no grouping, a position bias) is transformers' own sdpa_attention_forward. It is registered through
# transformers' public AttentionInterface (and the sdpa mask through AttentionMaskInterface), so a model
# opts in with `attn_implementation="decodekit_sdpa"` at load, or `model.set_attn_implementation(...)`.

GROUPED_SDPA = "decodekit_sdpa"
_MASKABLE_ATTENTION = ("eager", "sdpa", GROUPED_SDPA)


def grouped_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, with grouped query heads attending their shared key-value head in place.

    query (B, H, T, D); key, value (B, H_kv, S, D); attention_mask (B, 1, T, S) or None. Returns (B, T, H, D).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, tokens, dim = query.shape
    if (groups == 1 or attention_mask is None or tokens == 1 or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or kwargs.get("position_bias") is not None or kwargs.get("softcap")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    stacked = query.reshape(batch, heads // groups, groups * tokens, dim)  # (B, H_kv, groups * T, D)
    mask = attention_mask.repeat(1, 1, groups, 1)  # (B, 1, groups * T, S): each stacked head sees its own rows
    out = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling)  # (B, H_kv, groups * T, D)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None  # (B, T, H, D)


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)

# On a GPU, torch's scaled_dot_product_attention may choose cuDNN's attention (it prefers it on Hopper),
# which builds an execution graph for every new shape and reuses it only for that shape. A decode meets a
# new shape at every step (the cache grows; planned steps vary in size), so each of the model's layers
# paid a graph build on every step: on an H200 a masked step of SmolLM2 took ~50-65 ms instead of ~25 ms
# (docs/benchmarks.md, "On a GPU"). decodekit's forwards leave cuDNN out; torch chooses among the rest.
DECODE_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def decode_attention_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """The context decodekit's forwards run in: on CUDA, torch's sdpa without cuDNN; elsewhere unchanged."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(list(DECODE_SDPA_BACKENDS))


def _device_mesh(model: Any) -> Any:
    """The device mesh a sharded model's weights live on (transformers' own, else a DTensor weight's); None
    for a model every rank holds whole."""
    mesh = getattr(model, "_device_mesh", None)
    if mesh is not None:
        return mesh
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return next((p.device_mesh for p in model.parameters() if isinstance(p, DTensor)), None)


def is_sharded(model: Any) -> bool:
    """Whether `model`'s weights are sharded over ranks (tensor parallelism)."""
    return _device_mesh(model) is not None


def shardable_sizes(config: Any) -> list[int]:
    """The rank counts a model's attention splits over evenly (tensor parallelism gives each rank whole heads):
    the common divisors of its attention heads and key-value heads."""
    text = config.get_text_config(decoder=True)
    heads = getattr(text, "num_attention_heads", None)
    if not isinstance(heads, int):
        return []
    kv = getattr(text, "num_key_value_heads", None) or heads
    return [n for n in range(1, heads + 1) if heads % n == 0 and kv % n == 0]


# a tensor-parallel plan's key for an attention projection: "layers.*.self_attn.q_proj", "h.*.attn.c_attn", ...
_ATTENTION_KEY = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)\.")


def attention_kept_whole_plan(config: Any) -> dict[str, str]:
    """A tensor-parallel plan override that keeps every attention projection whole ("replicate") on every rank,
    so that only the rest of the model's plan (its MLPs) is sharded: for a model whose heads do not split
    evenly over the ranks. Keys are the model's own plan's, under its base model's prefix."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    text = config.get_text_config(decoder=True)
    plan = getattr(text, "base_model_tp_plan", None) or {}
    prefix = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].base_model_prefix
    return {f"{prefix}.{key}": "replicate" for key in plan if _ATTENTION_KEY.search(key)}


def check_shardable(config: Any, ranks: int, role: str = "model") -> dict[str, str] | None:
    """None when `ranks` split the model's attention heads and key-value heads evenly (its own plan applies
    whole); else the plan override that keeps attention whole on every rank (attention_kept_whole_plan),
    provided the MLP splits evenly. Raises ModelNotSupportedError naming the allowed rank counts otherwise."""
    sizes = shardable_sizes(config)
    if not sizes or ranks in sizes:
        return None
    text = config.get_text_config(decoder=True)
    kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    intermediate = getattr(text, "intermediate_size", None)
    override = attention_kept_whole_plan(config)
    if isinstance(intermediate, int) and intermediate % ranks == 0 and override:
        return override
    mlp_only = [n for n in range(2, 17) if override and isinstance(intermediate, int) and intermediate % n == 0
                and n not in sizes]  # rank counts that work with attention kept whole (up to 16 named)
    also = f"; with attention kept whole: {', '.join(map(str, mlp_only))}" if mlp_only else ""
    raise ModelNotSupportedError(
        f"{role} has {text.num_attention_heads} attention heads and {kv} key-value heads, which tensor "
        f"parallelism cannot split over {ranks} ranks, and an MLP of {intermediate} that it cannot split over "
        f"them either; allowed tp_size (rank counts): {', '.join(map(str, sizes))}{also}")


def model_ranks(model: Any, role: str = "model") -> Ranks | None:
    """The ranks that run `model`'s forward together: None unless it is sharded over more than one rank.

    Every rank of the model's device mesh takes part in each forward, so all of them decide together: the
    mesh's own group when it has one dimension, the world when it spans every rank.
    """
    mesh = _device_mesh(model)
    if mesh is None or mesh.size() <= 1 or not torch.distributed.is_initialized():
        return None
    if mesh.ndim == 1:
        return shared_ranks(mesh.get_group())
    if mesh.size() == torch.distributed.get_world_size():
        return shared_ranks(None)
    raise ModelNotSupportedError(
        f"{role} is sharded over a {mesh.ndim}-dimensional device mesh of {mesh.size()} ranks "
        f"(dimensions {mesh.mesh_dim_names}) out of {torch.distributed.get_world_size()}; decodekit decodes "
        f"a model sharded over one mesh dimension, or over every rank of the world")


def _forward_parameters(model: Any) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _crop_takes_removal_count() -> bool:
    return "tokens_to_remove" in inspect.signature(DynamicCache.crop).parameters


_CROP_NEGATIVE = _crop_takes_removal_count()


@attrs.frozen(kw_only=True)
class LengthLimits:
    """How long a sequence a model can attend over exactly: read from its config, no weights needed."""

    max_positions: int | None
    sliding_window: int | None

    @classmethod
    def of(cls, config: Any) -> "LengthLimits":
        text = config.get_text_config(decoder=True)
        window = getattr(text, "sliding_window", None)
        layer_types = getattr(text, "layer_types", None) or ()
        if window is not None and layer_types and "sliding_attention" not in layer_types:
            window = None
        return cls(max_positions=getattr(text, "max_position_embeddings", None), sliding_window=window)

    def check(self, total: int, what: str) -> None:
        """Raise InputError naming `what` (e.g. "prompt length 9 + max_new_tokens 600") if `total` is too long."""
        if self.max_positions is not None and total > self.max_positions:
            raise InputError(
                f"{what} = {total} exceeds the model's max_position_embeddings ({self.max_positions}); "
                f"shorten the prompt or lower max_new_tokens"
            )
        if self.sliding_window is not None and total > self.sliding_window:
            raise InputError(
                f"{what} = {total} exceeds the model's sliding_window ({self.sliding_window}); decodekit's masks "
                f"are exact only within the window, so shorten the prompt or lower max_new_tokens"
            )


@attrs.define(eq=False)
class HFBackend:
    """A HuggingFace causal LM seen as "tokens in, logits out, cache updated"."""

    model: PreTrainedModel
    cache_keyword: str
    limits: "LengthLimits"
    vocab_size: int
    ranks: Ranks | None = None  # the ranks that run each forward together (a tensor-parallel model), else None

    @classmethod
    def for_model(cls, model: Any, role: str = "model") -> "HFBackend":
        """Check that `model` can be driven with a cache and a 4-D mask; raise before any forward if not."""
        if not isinstance(model, PreTrainedModel) or not callable(getattr(model, "forward", None)):
            raise ModelNotSupportedError(
                f"{role} must be a transformers PreTrainedModel with a causal-LM head, got {type(model).__name__}"
            )
        config = model.config
        if any(p.is_meta for p in model.parameters()):
            raise ModelNotSupportedError(f"{role} has weights on the meta device (no values); load or materialise "
                                         f"them (e.g. model.to_empty(device=...) and load a state dict) first")
        if getattr(config, "is_encoder_decoder", False):
            raise ModelNotSupportedError(f"{role} is an encoder-decoder model; decodekit decodes causal LMs only")
        params = _forward_parameters(model)
        keyword = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        if keyword is None:
            raise ModelNotSupportedError(
                f"{role}.forward of {type(model).__name__} takes no cache (neither `cache` nor `past_key_values`)"
            )
        for needed in ("attention_mask", "position_ids"):
            if needed not in params:
                raise ModelNotSupportedError(f"{role}.forward of {type(model).__name__} takes no `{needed}`")
        attention = getattr(config, "_attn_implementation", None) or "eager"
        if attention not in _MASKABLE_ATTENTION:
            raise ModelNotSupportedError(
                f"{role} uses attn_implementation={attention!r}, which cannot take a custom 4-D mask; "
                f"load it with attn_implementation='sdpa', '{GROUPED_SDPA}' or 'eager'"
            )
        text = config.get_text_config(decoder=True)
        head = model.get_output_embeddings()
        # out_features also covers heads whose weight is not a tensor attribute (torch's dynamic int8 Linear)
        vocab = getattr(head, "out_features", None) or (head.weight.shape[0] if head is not None else text.vocab_size)
        return cls(model=model, cache_keyword=keyword, limits=LengthLimits.of(config), vocab_size=int(vocab),
                   ranks=model_ranks(model, role))

    @property
    def max_positions(self) -> int | None:
        return self.limits.max_positions

    @property
    def sliding_window(self) -> int | None:
        return self.limits.sliding_window

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def check_length(self, total: int, what: str) -> None:
        """Refuse a request whose sequence would outgrow what the model can attend over exactly."""
        self.limits.check(total, what)

    # -- forward -------------------------------------------------------------------------------

    def new_cache(self) -> DynamicCache:
        return DynamicCache()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                mask: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """Run T new tokens after what `cache` holds; the cache grows by T.

        input_ids, positions: (T,). mask: (1, 1, T, cached + T) additive, or None for plain causal
        attention (the model's own causal mask: the same kernels as model.generate).
        logits_to_keep: 0 for every position's logits, k for the last k, or a (K,) tensor of positions.
        Returns logits (T or k, V).
        """
        kwargs = {self.cache_keyword: cache}
        with decode_attention_kernels(self.device):
            out = self.model(
                input_ids=input_ids[None].to(self.device),  # (1, T)
                position_ids=positions[None].to(self.device),  # (1, T)
                attention_mask=mask,
                use_cache=True,
                logits_to_keep=logits_to_keep.to(self.device) if torch.is_tensor(logits_to_keep) else logits_to_keep,
                **kwargs,
            )
        return out.logits[0]  # (T, V)

    def forward_rows(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                     mask: torch.Tensor | None, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
        """`forward` for a batch: input_ids, positions (B, T); mask (B, 1, T, cached + T) additive or None.

        Returns logits (B, T or K, V); every row of the cache grows by T.
        """
        kwargs = {self.cache_keyword: cache}
        with decode_attention_kernels(self.device):
            out = self.model(
                input_ids=input_ids.to(self.device),  # (B, T)
                position_ids=positions.to(self.device),  # (B, T)
                attention_mask=mask,
                use_cache=True,
                logits_to_keep=logits_to_keep.to(self.device) if torch.is_tensor(logits_to_keep) else logits_to_keep,
                **kwargs,
            )
        return out.logits  # (B, T, V)

    # -- the cache (used by the KV-cache manager only) -----------------------------------------

    @staticmethod
    def cache_length(cache: DynamicCache) -> int:
        return int(cache.get_seq_length())

    @staticmethod
    def crop_cache(cache: DynamicCache, length: int) -> None:
        """Keep the first `length` positions."""
        current = int(cache.get_seq_length())
        if length >= current:
            return
        cache.crop(length - current if _CROP_NEGATIVE else length)

    @staticmethod
    def compact_cache(cache: DynamicCache, start: int, keep: Sequence[int]) -> None:
        """Of the positions from `start` on, keep those at offsets `keep` (increasing), moved to start, start+1, ..."""
        index = torch.as_tensor(keep, dtype=torch.long) + start  # (K,)
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            idx = index.to(layer.keys.device)
            end = start + idx.shape[0]
            # offsets are increasing and >= their destination, so gathering first then writing is safe
            layer.keys[:, :, start:end] = layer.keys.index_select(2, idx)  # (B, H, K, D)
            layer.values[:, :, start:end] = layer.values.index_select(2, idx)  # (B, H, K, D)
        HFBackend.crop_cache(cache, start + index.shape[0])


    @staticmethod
    def move_columns(cache: DynamicCache, rows: Sequence[int], sources: Sequence[int], targets: Sequence[int]) -> None:
        """For each i, row rows[i]'s keys and values at column sources[i] are copied to column targets[i]
        (every source is read before any target is written)."""
        indices: dict[torch.device, tuple[torch.Tensor, ...]] = {}  # built once per device, not per layer
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            device = layer.keys.device
            if device not in indices:
                indices[device] = tuple(torch.as_tensor(x, dtype=torch.long, device=device)  # each (M,)
                                        for x in (rows, sources, targets))
            b, src, dst = indices[device]
            layer.keys[b, :, dst] = layer.keys[b, :, src]  # (M, H, D)
            layer.values[b, :, dst] = layer.values[b, :, src]  # (M, H, D)

    @staticmethod
    def stack_rows(parts: Sequence[tuple[Sequence[int], DynamicCache]]) -> DynamicCache:
        """One cache holding every part's rows: row r of part (indices, cache) becomes row indices[r]. Parts
        shorter than the longest get zero columns at the end. The first part's cache object is reused."""
        order = torch.as_tensor([b for indices, _ in parts for b in indices], dtype=torch.long)  # (B,)
        inverse = torch.argsort(order)  # (B,): stacked row of each batch row
        width = max(HFBackend.cache_length(cache) for _, cache in parts)
        base = parts[0][1]
        for i, layer in enumerate(base.layers):
            for name in ("keys", "values"):
                pieces = []
                for _, cache in parts:
                    piece = getattr(cache.layers[i], name)  # (b, H, S_part, D)
                    pieces.append(torch.nn.functional.pad(piece, (0, 0, 0, width - piece.shape[-2])))  # (b, H, S, D)
                stacked = torch.cat(pieces, dim=0)  # (B, H, S, D) in the parts' order
                setattr(layer, name, stacked.index_select(0, inverse.to(stacked.device)))  # (B, H, S, D)
        return base

    @staticmethod
    def select_rows(cache: DynamicCache, rows: Sequence[int]) -> None:
        """Keep only the batch rows `rows` of every layer, in that order (an emptied layer too: its batch size counts)."""
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None:
                continue
            index = torch.as_tensor(rows, dtype=torch.long, device=layer.keys.device)  # (B',)
            layer.keys = layer.keys.index_select(0, index)  # (B', H, S, D)
            layer.values = layer.values.index_select(0, index)  # (B', H, S, D)


# -- loading and building models ------------------------------------------------------------------


# The config fields that size a forward (with the class and the attention kernel): a cost model's identity.
_COST_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "_name_or_path")


def cost_identity(model: Any) -> dict[str, Any]:
    """What sets the cost of `model`'s forward, apart from the machine: its class, attention kernel, the
    config fields that size it, dtype and device (plain JSON values, for a cache key)."""
    text = model.config.get_text_config(decoder=True)
    fields = {name: getattr(text, name, None) for name in _COST_FIELDS}
    fields = {name: value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
              for name, value in fields.items()}
    identity = {"class": type(model).__name__, "attention": getattr(model.config, "_attn_implementation", None),
                **fields, "dtype": str(model.dtype).replace("torch.", ""), "device": str(model.device)}
    ranks = model_ranks(model)
    if ranks is not None:  # a sharded forward costs what its slices and collectives cost
        identity["ranks"] = ranks.size
    return identity


def is_hf_model(obj: Any) -> bool:
    """Whether `obj` is a transformers model (what every strategy and draft builder needs)."""
    return isinstance(obj, PreTrainedModel)


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer of a local HuggingFace model folder (no weights are read; nothing is fetched)."""
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_config(folder: str | Path) -> Any:
    """The config of a local model folder (what can be checked before its weights load: LengthLimits.of it)."""
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def check_tp_size(tp_size: Any) -> int | None:
    """`tp_size` if a model can be sharded over that many ranks now: None or 1 (no sharding), or the world size
    of an initialised torch.distributed (under torchrun). Raises InputError naming what is allowed otherwise."""
    if tp_size is None:
        return None
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise InputError(f"tp_size must be None or an integer >= 1 (the number of ranks to shard the model over), "
                         f"got {tp_size!r}")
    if tp_size == 1:
        return None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise InputError(f"tp_size={tp_size} shards the model over {tp_size} ranks, but torch.distributed is not "
                         f"initialised: launch {tp_size} processes (torchrun --nproc_per_node {tp_size} ...) and call "
                         f"torch.distributed.init_process_group() in each first; without them tp_size must be "
                         f"None or 1")
    world = torch.distributed.get_world_size()
    if tp_size != world:
        raise InputError(f"tp_size={tp_size} must equal the number of ranks torch.distributed runs ({world}); "
                         f"allowed here: None, 1 or {world}")
    return tp_size


def _tensor_parallel_keywords(tp_size: int, override: dict[str, str] | None) -> dict[str, Any]:
    """from_pretrained's keywords that shard a model over `tp_size` ranks with its own tensor-parallel plan
    (`override` replacing some of its rules): `distributed_config=DistributedConfig(tp_size=N, tp_plan=...)` in
    recent 5.x releases, `tp_plan="auto", tp_size=N` before (which take no override)."""
    try:
        from transformers.distributed import DistributedConfig
    except ImportError:
        DistributedConfig = None
    if DistributedConfig is None or "tp_size" not in inspect.signature(DistributedConfig).parameters:
        if override:
            raise ModelNotSupportedError("this transformers release cannot keep attention whole while sharding the "
                                         "rest (DistributedConfig(tp_plan=...)); choose a tp_size that splits the "
                                         "attention heads evenly")
        return {"tp_plan": "auto", "tp_size": tp_size}
    return {"distributed_config": DistributedConfig(tp_size=tp_size, tp_plan=override or None)}


def load_model(folder: str | Path, dtype: torch.dtype, attn_implementation: str = GROUPED_SDPA,
               tp_size: int | None = None) -> Any:
    """The causal LM of a local HuggingFace model folder, in eval mode; nothing is fetched.

    tp_size=N (N > 1, under torchrun with N ranks and torch.distributed initialised): every rank loads its
    slice of the weights, sharded by transformers' own tensor-parallel plan for the architecture. When N does
    not split the attention heads evenly (SmolLM2-135M's 9 heads over 2 ranks), attention stays whole on every
    rank and only the MLPs are sharded.
    """
    tp_size = check_tp_size(tp_size)
    extra = {}
    if tp_size is not None:
        override = check_shardable(load_config(folder), tp_size, role=f"the model in {folder}")
        extra = _tensor_parallel_keywords(tp_size, override)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn_implementation,
                                                 local_files_only=True, **extra)
    return model.eval()


def load_pretrained(folder: str | Path, dtype: torch.dtype, attn_implementation: str = GROUPED_SDPA,
                    tp_size: int | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a local HuggingFace model folder (load_model: tp_size shards it)."""
    return load_model(folder, dtype, attn_implementation, tp_size), load_tokenizer(folder)


def load_gguf_dense(path: Path) -> tuple[Any, Any]:
    """(float32 model, tokenizer) from a GGUF file, its weights unpacked into plain dense tensors.

    Without `dequantize=True` transformers 5.x keeps GGUF weights packed, and a config saved from
    such a load carries `quantization_config`; it is dropped so that a saved copy is a plain checkpoint.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(gguf_file=path.name, dequantize=True))
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def config_for(model_type: str, **fields: Any) -> Any:
    """A transformers config of `model_type` ("llama", "gpt2", ...) with `fields` set."""
    return AutoConfig.for_model(model_type, **fields)


def model_from_config(config: Any, dtype: torch.dtype, attn_implementation: str | None = None) -> Any:
    """A randomly initialised causal LM for `config` (seed the RNG, or fork it, around the call)."""
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
