"""The machinery every strategy shares: types, registry, decode loop, KV cache, masks, backend."""
