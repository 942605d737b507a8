"""decodekit-prompt-lookup: the `prompt-lookup` decoding strategy as a decodekit plugin."""

from decodekit_prompt_lookup.strategy import PromptLookup, find_draft

__all__ = ["PromptLookup", "find_draft"]
__version__ = "0.1.0"
