"""Where lookahead decoding's candidates come from, and how they are merged for verification.

- `NgramPool`: the paper's pool. Each key keeps at most G continuations (the N-1 tokens that followed
  it), the most recent first and without duplicates.
- `ContextIndex`: the committed text (prompt and output) indexed by short contexts, so the text that
  followed the longest earlier match of the current suffix can be proposed (prompt-lookup style).
- `Trie`: candidates merged by shared prefix, so a shared token is computed once.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import attrs


@attrs.define(eq=False)
class NgramPool:
    n: int  # n-gram length: a key plus n - 1 continuation tokens
    capacity: int  # G: continuations kept per key
    table: dict[int, list[tuple[int, ...]]] = attrs.Factory(dict)
    origins: dict[tuple[int, tuple[int, ...]], str] = attrs.Factory(dict)  # who first made each n-gram

    def add(self, key: int, continuation: Sequence[int], origin: str = "text") -> None:
        """Remember `continuation` after `key` as the most recent candidate.

        origin: what made it, "text" (the prompt or the output) or "window" (lookahead's Jacobi
        window); the first maker is kept, so an n-gram the window guessed before the text confirmed
        it stays the window's.
        """
        if self.capacity == 0:
            return
        cont = tuple(continuation)
        self.origins.setdefault((key, cont), origin)
        bucket = self.table.setdefault(key, [])
        if bucket and bucket[0] == cont:
            return
        if cont in bucket:
            bucket.remove(cont)
        bucket.insert(0, cont)
        del bucket[self.capacity:]

    def add_sequence(self, tokens: Sequence[int], first_end: int = 0) -> None:
        """Add every full n-gram of `tokens` that ends at index >= first_end, oldest first."""
        n = self.n
        for start in range(max(0, first_end - n + 1), len(tokens) - n + 1):
            self.add(tokens[start], tokens[start + 1:start + n])

    def origin(self, key: int, continuation: Sequence[int]) -> str:
        """Who made a stored candidate (a candidate cut shorter is its full n-gram's, or "text")."""
        cont = tuple(continuation)
        for full in self.table.get(key, ()):
            if full[: len(cont)] == cont:
                return self.origins.get((key, full), "text")
        return "text"

    def candidates(self, key: int, max_length: int) -> list[tuple[int, ...]]:
        """The continuations stored for `key`, each cut to max_length tokens (most recent first)."""
        if max_length <= 0:
            return []
        return [c[:max_length] for c in self.table.get(key, ())]


@attrs.define(eq=False)
class ContextIndex:
    """The committed text, indexed by every context of 1..max_context tokens.

    `ends[context]` lists the indices just past each occurrence of `context`, oldest first, so the
    tokens that followed an earlier occurrence of the text's suffix are one lookup away.
    """

    max_context: int
    tokens: list[int] = attrs.Factory(list)
    ends: dict[tuple[int, ...], list[int]] = attrs.Factory(dict)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append committed tokens and index the contexts that end at each of them."""
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens)
            for k in range(1, min(self.max_context, end) + 1):
                self.ends.setdefault(tuple(self.tokens[end - k:end]), []).append(end)

    def candidates(self, count: int, max_length: int) -> list[tuple[int, ...]]:
        """Up to `count` distinct continuations (each at most `max_length` tokens) of the text's suffix.

        The longest matching context comes first, then the most recent occurrence: a longer match
        predicts the next tokens better, and a recent one follows the text's current topic.
        """
        return [continuation for continuation, _ in self.matches(count, max_length)]

    def matches(self, count: int, max_length: int) -> list[tuple[tuple[int, ...], int]]:
        """`candidates`, each with the length of the context match it came from."""
        found: list[tuple[tuple[int, ...], int]] = []
        seen: set[tuple[int, ...]] = set()
        total = len(self.tokens)
        if count <= 0 or max_length <= 0:
            return found
        for k in range(min(self.max_context, total), 0, -1):
            for end in reversed(self.ends.get(tuple(self.tokens[total - k:]), ())):
                continuation = tuple(self.tokens[end:end + max_length])
                if continuation and continuation not in seen:  # end == total: the suffix itself
                    seen.add(continuation)
                    found.append((continuation, k))
                    if len(found) == count:
                        return found
        return found


@attrs.define(eq=False)
class Trie:
    """Candidates merged by shared prefix. Node i holds tokens[i] and its parent index (-1: the root)."""

    tokens: list[int] = attrs.Factory(list)
    parents: list[int] = attrs.Factory(list)
    children: dict[tuple[int, int], int] = attrs.Factory(dict)  # (parent, token) -> node

    @classmethod
    def build(cls, candidates: Iterable[Sequence[int]]) -> "Trie":
        trie = cls()
        for cand in candidates:
            parent = -1
            for token in cand:
                node = trie.children.get((parent, token))
                if node is None:
                    node = len(trie.tokens)
                    trie.tokens.append(token)
                    trie.parents.append(parent)
                    trie.children[(parent, token)] = node
                parent = node
        return trie

    def __len__(self) -> int:
        return len(self.tokens)

    def child(self, node: int, token: int) -> int | None:
        return self.children.get((node, token))

    def child_tokens(self, node: int) -> list[tuple[int, int]]:
        """(token, child node) pairs under `node`, in insertion order (most recent candidate first)."""
        return [(tok, child) for (parent, tok), child in self.children.items() if parent == node]
