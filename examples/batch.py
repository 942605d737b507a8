"""A batch of prompts of different lengths through one forward per step; every row equals its one-by-one output.

    python examples/batch.py [--strategy lookahead] [--max-new-tokens 64] [--dtype float32]
"""

from __future__ import annotations

import argparse

import decodekit

PROMPTS = [
    "Name three primary colors.",
    "Explain in two sentences why the sky is blue, for a child who asks.",
    "Rewrite in the passive voice: The committee approved the new library budget on Tuesday.",
    "Write a Python function that returns the sum of the squares of a list of numbers.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="lookahead")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    model, tokenizer = decodekit.models.load_default(args.dtype)
    ids, mask = decodekit.models.chat_batch(tokenizer, PROMPTS)  # (4, L), left-padded
    pad = decodekit.models.pad_id(tokenizer)
    out = decodekit.generate(model, ids, strategy=args.strategy, attention_mask=mask, pad_token_id=pad,
                             max_new_tokens=args.max_new_tokens)
    print(f"batch of {len(PROMPTS)}, prompt lengths {mask.sum(dim=1).tolist()}: {out.stats.summary()}")
    for row, prompt in enumerate(PROMPTS):
        one = decodekit.models.chat_ids(tokenizer, prompt)  # (1, T): the prompt alone, unpadded
        alone = decodekit.generate(model, one, strategy="greedy", max_new_tokens=args.max_new_tokens)
        expected = alone.sequences[0, one.shape[1]:].tolist()  # its new tokens
        new = out.sequences[row, ids.shape[1]:].tolist()  # the row's new tokens, then the pad fill
        same = new[: len(expected)] == expected and all(t == pad for t in new[len(expected):])
        text = tokenizer.decode(expected, skip_special_tokens=True).strip().replace("\n", " ")
        print(f"row {row}, {len(expected)} tokens, {'identical to' if same else 'DIFFERENT from'} greedy alone: "
              f"{text[:70]}")


if __name__ == "__main__":
    main()
