"""Exactness checks: "this strategy's output equals greedy decoding's", token for token.

compare_with_greedy() runs one case and says where the outputs part; assert_matches_greedy() runs
the property over Hypothesis-drawn cases (tiny models of several architectures, repetitive and random
prompts, eos choices) for any registered strategy, and fails with the first differing position.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import attrs
import torch

from decodekit.core.sequences import first_difference  # re-exported: part of decodekit.testing
from decodekit.testing.strategies import FromOutput, GenerationCase, generation_cases


def _window(tokens: Sequence[int], at: int, width: int = 6) -> str:
    lo = max(0, at - width)
    shown = [str(t) for t in tokens[lo:at + width]]
    if at - lo < len(shown):
        shown[at - lo] = f"[{shown[at - lo]}]"
    return ("... " if lo else "") + " ".join(shown) + (" ..." if at + width < len(tokens) else "")


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


@attrs.frozen(kw_only=True)
class Comparison:
    """The outcome of one strategy-vs-greedy run: the new tokens of both and where they part."""

    strategy: str
    params: Mapping[str, Any]
    greedy: tuple[int, ...]
    output: tuple[int, ...]
    prompt_length: int
    eos_token_id: Any = None  # what both runs were given

    @property
    def position(self) -> int | None:
        """Index (among the new tokens) of the first difference, or None when identical."""
        return first_difference(self.greedy, self.output)

    @property
    def identical(self) -> bool:
        return self.position is None

    def describe(self) -> str:
        """One paragraph: identical, or the first differing position with both tokens and their context."""
        label = self.strategy + (f"({_params_text(self.params)})" if self.params else "")
        at = self.position
        if at is None:
            return f"{label} equals greedy ({len(self.greedy)} new tokens)"

        def token(seq: tuple[int, ...]) -> str:
            return str(seq[at]) if at < len(seq) else f"<end: stopped after {len(seq)} tokens>"

        width = max(len("greedy"), len(self.strategy)) + 1
        return (f"{label} differs from greedy at new token {at} (sequence position {self.prompt_length + at}): "
                f"greedy {token(self.greedy)}, {self.strategy} {token(self.output)}\n"
                f"  {'greedy:':<{width}} {_window(self.greedy, at)}\n"
                f"  {self.strategy + ':':<{width}} {_window(self.output, at)}")


def compare_with_greedy(model: Any, input_ids: torch.Tensor | Sequence[int], strategy: str,
                        params: Mapping[str, Any] | None = None, *, max_new_tokens: int = 16,
                        eos_token_id: int | Iterable[int] | None = None, draft_model: Any = None,
                        settings: Mapping[str, Any] | None = None) -> Comparison:
    """Decode one prompt with greedy and with `strategy` (same model, same stop rule) and compare them.

    eos_token_id None: the model's generation config's eos; [] never stops. settings: generation
    keywords (repetition_penalty=..., ...) given to both runs.

    draft_model is passed to the strategy only (for strategies that need one).
    """
    import decodekit

    params = dict(params or {})
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids  # (1, T)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens)
    if eos_token_id is not None:  # None: the model's own eos (generate() would read an explicit None as "no eos")
        kwargs["eos_token_id"] = eos_token_id
    kwargs.update(settings or {})
    greedy = decodekit.generate(model, ids, "greedy", **kwargs)
    extra = {"draft_model": draft_model} if draft_model is not None else {}
    output = decodekit.generate(model, ids, strategy, **kwargs, **extra, **params)
    n = ids.shape[1]
    return Comparison(strategy=strategy, params=params, prompt_length=n, eos_token_id=eos_token_id,
                      greedy=tuple(greedy.sequences[0, n:].tolist()), output=tuple(output.sequences[0, n:].tolist()))


def compare_batch_with_greedy(model: Any, prompts: Sequence[Sequence[int]], strategy: str,
                              params: Mapping[str, Any] | None = None, *, max_new_tokens: int = 16,
                              eos_token_id: int | Iterable[int] | None = None, draft_model: Any = None,
                              settings: Mapping[str, Any] | None = None, pad_token_id: int = 0) -> list[Comparison]:
    """Decode `prompts` as one left-padded batch with `strategy`, and each prompt alone with greedy; one
    Comparison per row (its new tokens up to where the batch pads it, against the row's own greedy run).

    Arguments as compare_with_greedy's; pad_token_id pads the batch (its left padding and its pad fill).
    """
    import decodekit

    params = dict(params or {})
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    if eos_token_id is not None:
        kwargs["eos_token_id"] = eos_token_id
    kwargs.update(settings or {})
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)  # (B, L)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)  # (B, L)
    extra = {"draft_model": draft_model} if draft_model is not None else {}
    batch = decodekit.generate(model, ids, strategy, attention_mask=mask, **kwargs, **extra, **params)
    out = []
    for row, prompt in enumerate(prompts):
        alone = decodekit.generate(model, torch.tensor([list(prompt)]), "greedy", **kwargs)
        greedy = alone.sequences[0, len(prompt):].tolist()
        new = batch.sequences[row, width:].tolist()
        # the batch pads a row that stopped early: compare its tokens up to greedy's stop, then the fill
        fill_ok = all(t == pad_token_id for t in new[len(greedy):])
        output = new[: len(greedy)] if fill_ok else new
        out.append(Comparison(strategy=f"{strategy} (row {row} of {len(prompts)})", params=params,
                              prompt_length=len(prompt), eos_token_id=eos_token_id, greedy=tuple(greedy),
                              output=tuple(output)))
    return out


def check_case(strategy: str, params: Mapping[str, Any], case: GenerationCase) -> Comparison:
    """Run one drawn case; FromOutput eos choices are resolved against an eos-free greedy run first.

    A strategy whose capabilities say needs_draft_model gets the case's draft model (default: the
    target model itself).
    """
    from decodekit.plugins.manager import get_registry

    model = case.model.build()
    draft_model = None
    if get_registry().get(strategy).capabilities.needs_draft_model:
        draft_model = (case.draft or case.model).build()
    eos = case.eos
    if isinstance(eos, FromOutput):
        free = compare_with_greedy(model, case.prompt, "greedy", max_new_tokens=case.max_new_tokens, eos_token_id=[])
        eos = eos.resolve(free.greedy)
        eos = [] if eos is None else eos
    if case.rows:  # a batch: the first row that parts from its greedy run, else the first row
        rows = compare_batch_with_greedy(model, [case.prompt, *case.rows], strategy, params,
                                         max_new_tokens=case.max_new_tokens, eos_token_id=eos,
                                         draft_model=draft_model, settings=case.settings)
        return next((c for c in rows if not c.identical), rows[0])
    return compare_with_greedy(model, case.prompt, strategy, params, max_new_tokens=case.max_new_tokens,
                               eos_token_id=eos, draft_model=draft_model, settings=case.settings)


def assert_matches_greedy(strategy: str, /, *, cases: Any = None, hypothesis_settings: Any = None,
                          **params: Any) -> None:
    """Assert, over many drawn cases, that `strategy` with `params` outputs exactly what greedy does.

    strategy: a registered name (plugins included); params: its keyword parameters, validated first.
    cases: a Hypothesis strategy of GenerationCase (default: decodekit.testing.strategies.generation_cases();
    decodekit.testing.strategies.batch_cases() decodes each prompt in a left-padded batch of up to 6 rows).
    hypothesis_settings: a hypothesis.settings (default: the loaded profile, e.g. `dev` or `ci`).
    On failure raises AssertionError naming the first differing new token, both tokens, their context,
    the model, the prompt and the eos choice (Hypothesis shrinks the case first).
    """
    from hypothesis import given

    from decodekit.errors import DecodekitError
    from decodekit.plugins.manager import get_registry

    registry = get_registry()
    registry.make_params(strategy, params)  # unknown name or bad parameter: raise now, not per example
    if not registry.get(strategy).capabilities.exact:
        raise DecodekitError(f"strategy {strategy!r} does not declare capabilities.exact=True; "
                             f"its output is not expected to equal greedy")

    @given(case=cases if cases is not None else generation_cases())
    def matches_greedy(case: GenerationCase) -> None:
        comparison = check_case(strategy, params, case)
        if not comparison.identical:
            uses_draft = registry.get(strategy).capabilities.needs_draft_model
            draft = f"; draft model: {case.draft or case.model}" if uses_draft else ""
            eos = f"{case.eos!r}" + (f" = {comparison.eos_token_id!r}" if isinstance(case.eos, FromOutput) else "")
            settings = f"; settings: {dict(case.settings)}" if case.settings else ""
            rows = f"; batched with the rows {[list(r) for r in case.rows]}" if case.rows else ""
            raise AssertionError(f"{comparison.describe()}\n  model: {case.model}{draft}; prompt ({len(case.prompt)} "
                                 f"tokens): {list(case.prompt)}{rows}; eos: {eos}; max_new_tokens: "
                                 f"{case.max_new_tokens}{settings}")

    if hypothesis_settings is not None:
        matches_greedy = hypothesis_settings(matches_greedy)
    matches_greedy()
