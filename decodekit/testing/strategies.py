"""Public Hypothesis strategies for testing decoding strategies.

    from decodekit.testing import strategies as dks

    @given(dks.generation_cases())
    def test_my_strategy(case): ...

Everything drawn here is small on purpose: a tiny random model (several real architectures, see
decodekit.testing.models), a short prompt, a stop rule and a few new tokens, so a property runs many
examples per second on a CPU. Prompts are often repetitive (a short pattern repeated, with noise)
because that is what n-gram, lookahead and prompt-lookup strategies feed on; eos choices are often
tokens the model really emits, so stops land in the middle of a multi-token step.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
from hypothesis import strategies as st

from decodekit.testing.models import ARCHITECTURES, tiny_model

# The tiny models' vocabularies; token 2 is their eos, 0 pad, 1 bos.
VOCAB_SIZE = 96
SMALL_VOCAB_SIZE = 12


@attrs.frozen(kw_only=True)
class TinyModelConfig:
    """Which tiny model to build: `config.build()` returns it (cached, do not modify it)."""

    arch: str
    seed: int = 0
    init: float = 0.3
    attn: str = "sdpa"
    vocab_size: int = VOCAB_SIZE

    def build(self) -> Any:
        return tiny_model(self.arch, seed=self.seed, init=self.init, attn=self.attn, vocab_size=self.vocab_size)

    def __str__(self) -> str:
        return f"tiny {self.arch} (seed={self.seed}, init={self.init}, attn={self.attn}, vocab_size={self.vocab_size})"


@attrs.frozen(kw_only=True)
class FromOutput:
    """An eos choice resolved against the greedy output: its `index`-th new token (mod its length).

    This makes the stop token one the model really emits, so the stop is hit, often in the middle of
    a multi-token step, which is where truncation bugs live.
    """

    index: int

    def resolve(self, greedy_new_tokens: Sequence[int]) -> int | None:
        if not greedy_new_tokens:
            return None
        return int(greedy_new_tokens[self.index % len(greedy_new_tokens)])


@attrs.frozen(kw_only=True)
class GenerationCase:
    """One generate() call to compare against greedy decoding."""

    model: TinyModelConfig
    prompt: tuple[int, ...]
    eos: Any  # None (the model's own eos, token 2), [] (never stop), an id, a list of ids, or FromOutput
    max_new_tokens: int
    # The draft model, for strategies whose capabilities say needs_draft_model: the target itself
    # (every draft accepted) or another tiny model with the same vocabulary (many rejected).
    draft: TinyModelConfig | None = None
    # generation settings (GenerationConfig keywords: repetition_penalty=..., no_repeat_ngram_size=...),
    # given to both runs; logits processors then apply at every position a strategy verifies
    settings: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    # more prompts decoded in the same left-padded batch as `prompt` (batch_cases); each row must equal
    # greedy decoding of that row alone
    rows: tuple[tuple[int, ...], ...] = ()


def tiny_model_configs(architectures: Sequence[str] = ARCHITECTURES, seeds: Sequence[int] = (0, 1),
                       inits: Sequence[float] = (0.3, 1.0), attns: Sequence[str] = ("sdpa", "eager"),
                       vocab_sizes: Sequence[int] = (VOCAB_SIZE, SMALL_VOCAB_SIZE)) -> st.SearchStrategy[TinyModelConfig]:
    """Tiny random model configs across architectures (llama, qwen2, mistral, gpt2 by default).

    The defaults span 64 models, which all fit the tiny-model cache, so examples reuse built models.
    A small vocabulary (12 tokens) makes greedy decoding fall into loops quickly: drafting strategies
    then get long drafts accepted, which exercises multi-token commits and mid-step stops.
    """
    return st.builds(TinyModelConfig, arch=st.sampled_from(tuple(architectures)), seed=st.sampled_from(tuple(seeds)),
                     init=st.sampled_from(tuple(inits)), attn=st.sampled_from(tuple(attns)),
                     vocab_size=st.sampled_from(tuple(vocab_sizes)))


def tiny_models(**kwargs: Any) -> st.SearchStrategy[Any]:
    """The models themselves (see tiny_model_configs for the keywords)."""
    return tiny_model_configs(**kwargs).map(TinyModelConfig.build)


@st.composite
def _repetitive(draw: st.DrawFn, vocab_size: int, min_size: int, max_size: int) -> list[int]:
    token = st.integers(3, vocab_size - 1)
    pattern = draw(st.lists(token, min_size=1, max_size=6))
    size = draw(st.integers(max(min_size, len(pattern)), max_size))
    out = [pattern[i % len(pattern)] for i in range(size)]
    for _ in range(draw(st.integers(0, 2))):  # a little noise, so matches are not everywhere
        out[draw(st.integers(0, size - 1))] = draw(token)
    return out


def prompts(vocab_size: int = VOCAB_SIZE, min_size: int = 1, max_size: int = 24) -> st.SearchStrategy[list[int]]:
    """Prompts as token-id lists: random ones and repetitive ones (a short pattern repeated, with noise).

    Ids are drawn from [3, vocab_size): the tiny models' special tokens (0 pad, 1 bos, 2 eos) stay out
    of prompts, so eos means "stop" only where it is generated.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"prompts needs 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    random = st.lists(st.integers(3, vocab_size - 1), min_size=min_size, max_size=max_size)
    return st.one_of(random, _repetitive(vocab_size, min_size, max_size))


def eos_choices(vocab_size: int = VOCAB_SIZE) -> st.SearchStrategy[Any]:
    """What generate() gets as eos_token_id: None (the model's), [] (never stop), an id, a list, FromOutput."""
    token = st.integers(2, vocab_size - 1)
    return st.one_of(
        st.none(),
        st.just([]),
        st.builds(FromOutput, index=st.integers(0, 40)),
        token,
        st.lists(token, min_size=1, max_size=3, unique=True),
    )


@st.composite
def generation_settings(draw: st.DrawFn, vocab_size: int = SMALL_VOCAB_SIZE) -> dict[str, Any]:
    """Generation settings whose logits processors depend on each position's prefix (or length).

    Some of: min_new_tokens, repetition_penalty, no_repeat_ngram_size, bad_words_ids, suppress_tokens,
    begin_suppress_tokens, sequence_bias (token ids from [3, vocab_size)); often none. A strategy that
    verifies with `state.choose(logits, paths)` (or `state.scores`) honours them exactly; one that
    takes the raw argmax does not, and fails.
    """
    token = st.integers(3, vocab_size - 1)
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["min_new_tokens"] = draw(st.integers(0, 12))
    if draw(st.booleans()):
        out["repetition_penalty"] = draw(st.sampled_from([0.8, 1.3, 2.0]))
    if draw(st.booleans()):
        out["no_repeat_ngram_size"] = draw(st.integers(2, 4))
    if draw(st.integers(0, 3)) == 0:
        out["bad_words_ids"] = draw(st.lists(st.lists(token, min_size=1, max_size=2), min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        out["suppress_tokens"] = draw(st.lists(token, min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        out["begin_suppress_tokens"] = draw(st.lists(token, min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        out["sequence_bias"] = {(draw(token),): draw(st.sampled_from([-3.0, 2.0])),
                                (draw(token), draw(token)): draw(st.sampled_from([-5.0, 4.0]))}
    return out


# mostly long enough for several multi-token steps, sometimes so short that the first step is cut
_MAX_NEW_TOKENS = st.one_of(st.integers(12, 32), st.integers(1, 4))


@st.composite
def generation_cases(draw: st.DrawFn, models: st.SearchStrategy[TinyModelConfig] | None = None,
                     prompt: st.SearchStrategy[list[int]] | None = None,
                     eos: st.SearchStrategy[Any] | None = None,
                     max_new_tokens: st.SearchStrategy[int] | None = None,
                     settings: st.SearchStrategy[dict[str, Any]] | None = None) -> GenerationCase:
    """Whole cases: a tiny model, a prompt in its vocabulary, an eos choice and max_new_tokens (1 to 32).

    Each keyword replaces the default strategy for that part (prompt and eos default to the drawn
    model's vocabulary; settings to none: pass `generation_settings()` to draw logits processors). The case also carries a draft model config (the target itself, or a tiny
    model of the same architecture and vocabulary with another seed), used only by strategies that
    need a draft model.
    """
    model = draw(models if models is not None else tiny_model_configs())
    draft = draw(st.sampled_from([model, attrs.evolve(model, seed=model.seed + 10), attrs.evolve(model, seed=model.seed + 11)]))
    return GenerationCase(
        model=model,
        draft=draft,
        prompt=tuple(draw(prompt if prompt is not None else prompts(model.vocab_size))),
        eos=draw(eos if eos is not None else eos_choices(model.vocab_size)),
        max_new_tokens=draw(max_new_tokens if max_new_tokens is not None else _MAX_NEW_TOKENS),
        settings=draw(settings) if settings is not None else {},
    )


@st.composite
def batch_cases(draw: st.DrawFn, models: st.SearchStrategy[TinyModelConfig] | None = None,
                max_rows: int = 6, settings: st.SearchStrategy[dict[str, Any]] | None = None) -> GenerationCase:
    """`generation_cases` whose prompt shares a left-padded batch with 0 to max_rows - 1 more prompts of
    other lengths: every row must equal greedy decoding of that row alone."""
    case = draw(generation_cases(models=models, settings=settings))
    more = draw(st.lists(prompts(case.model.vocab_size), min_size=0, max_size=max_rows - 1))
    return attrs.evolve(case, rows=tuple(tuple(p) for p in more))
