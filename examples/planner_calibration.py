"""Is the step planner's acceptance model calibrated? Expected against committed tokens, per category.

    .venv/bin/python examples/planner_calibration.py [--dtype float32] [--per-category 1] [--max-new-tokens 96]

Decodes Spec-Bench first turns ($DECODEKIT_SPEC_BENCH, else ../shared/data/spec_bench/question.jsonl)
with planned lookahead on the default model. For every step that put drafts through, it records what
the planner expected the step to commit (its `PlannedStep.expected`, the bonus token included) and what
verification committed; then, per (source, depth) cell, the probability the acceptance model gave each
tried token against how often it was accepted. A calibrated model expects about what it gets; one that
expects more puts through drafts that do not pay for their forward.

It watches the planner by wrapping `StepPlanner.plan` and `StepPlanner.record` in this process (an
observer only: what is planned and committed is unchanged). Times are not measured here: speed is
`decodekit bench`'s job.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import decodekit
from decodekit.bench.questions import default_questions_path, read_questions, select
from decodekit.core.planner import StepPlanner, matched_length
from decodekit.models import chat_ids, load_default


def watch_planner(steps: list[list[float]], cells: dict[tuple[str, int], list[float]]) -> None:
    """Wrap the planner: steps gets [expected, committed] per drafted step, cells [predicted, tried, accepted]."""
    plan, record = StepPlanner.plan, StepPlanner.record

    def planned(self, drafts, cached, extras=()):
        step = plan(self, drafts, cached, extras)
        steps.append([step.expected, 0.0] if step.nodes else [])
        return step

    def recorded(self, drafts, committed):
        if steps and steps[-1]:
            steps[-1][1] = float(len(committed))
        for draft in drafts:
            matched = matched_length(draft.tokens, committed)
            kind = draft.source if draft.source.startswith("pool") else (
                "context:1" if draft.source == "context:1" else "context:2+")
            for depth in range(1, min(len(draft.tokens), matched + 1) + 1):
                cell = cells[(kind, min(depth, 4))]
                cell[0] += self.acceptance.probability(draft.source, depth)
                cell[1] += 1
                cell[2] += depth <= matched
        record(self, drafts, committed)

    StepPlanner.plan, StepPlanner.record = planned, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    model, tokenizer = load_default(args.dtype)
    questions = select(read_questions(default_questions_path()), per_category=args.per_category)
    steps: list[list[float]] = []
    cells: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    watch_planner(steps, cells)
    by_category: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # steps, drafted, expected, got
    for question in questions:
        steps.clear()
        out = decodekit.generate(model, chat_ids(tokenizer, question.turns[0]), "lookahead",
                                 max_new_tokens=args.max_new_tokens)
        row = by_category[question.category]
        drafted = [s for s in steps if s]
        row[0] += len(steps)  # planned steps (the prefill is not one)
        row[1] += len(drafted)
        row[2] += sum(s[0] for s in drafted)
        row[3] += sum(s[1] for s in drafted)
        print(f"{question.category}: {len(drafted)} of {len(steps)} steps drafted, {out.stats.new_tokens} tokens",
              flush=True)
    print("\n| category | steps | drafted | expected per drafted step | committed per drafted step |")
    print("| --- | --- | --- | --- | --- |")
    for category, (total, drafted, expected, got) in by_category.items():
        mean = (lambda x: f"{x / drafted:.2f}") if drafted else (lambda x: "-")
        print(f"| {category} | {total:.0f} | {drafted:.0f} | {mean(expected)} | {mean(got)} |")
    print("\n| source | depth | tokens tried | predicted | accepted |")
    print("| --- | --- | --- | --- | --- |")
    for (kind, depth), (predicted, tried, accepted) in sorted(cells.items()):
        print(f"| {kind} | {depth if depth < 4 else '4+'} | {tried:.0f} | {predicted / tried:.2f} | {accepted / tried:.2f} |")


if __name__ == "__main__":
    main()
