"""The ranks that share one sharded model (tensor parallelism under torchrun) decide alike, or say so.

A tensor-parallel model runs every forward on all of its ranks together: each rank holds a slice of
every weight and of the cache, and the forward's collectives join them. decodekit runs the same decode
on every rank, so every rank must propose the same tokens, accept the same tokens and sample the same
tokens at every step; a rank that decided otherwise would feed its slice of the model other tokens and
the ranks' caches would part silently (or a forward of another shape would wait forever on its peers).

What every rank shares by construction: the prompts, the weights' outputs (the sharded forward returns
the same logits on every rank), the strategy parameters. What could differ, and how it is made equal:
- a generator seeded from the OS: the seed is rank 0's (`agree`); a user's generator is checked;
- the measured cost of a forward (wall time differs per rank): the cost model and every online
  correction use rank 0's timings (`agree`, and the seconds carried by `confirm_commits`);
everything else is confirmed each step, cheaply: one all_gather of four integers before the forward
(the step's proposals) and one after the commit (the tokens each row committed). A difference raises
RankMismatchError naming the step, the row and the ranks, on every rank at once (each sees the same
gathered values), instead of going on or hanging.

No code here imports transformers: the backend finds the model's ranks (`HFBackend.ranks`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import attrs
import torch
import torch.distributed as dist

from decodekit.errors import RankMismatchError

_MODULUS = (1 << 61) - 1  # a Mersenne prime: a digest fits an int64
_BASE = 1_000_003


def digest(values: Iterable[int], seed: int = 0) -> int:
    """A polynomial hash of a sequence of integers, its length included (an int64-sized checksum)."""
    h, n = seed % _MODULUS, 0
    for v in values:
        h = (h * _BASE + (int(v) % _MODULUS) + 1) % _MODULUS
        n += 1
    return (h * _BASE + n) % _MODULUS


def tensor_digest(t: torch.Tensor) -> int:
    """A checksum of an integer or bool tensor's values and shape (for the step's mask layout)."""
    flat = t.detach().flatten().cpu().long()  # (n,)
    weights = (torch.arange(flat.numel(), dtype=torch.long) * 2654435761 + 97) % (1 << 31)  # (n,)
    return digest([*t.shape, int((flat * weights).sum())])


def collective_device_type(backend: str) -> str:
    """Where a collective's tensors must live for a process-group backend: nccl takes CUDA tensors only;
    gloo, and a mixed "cpu:gloo,cuda:nccl" group, take CPU tensors."""
    return "cuda" if backend == "nccl" else "cpu"


@attrs.frozen(kw_only=True)
class Ranks:
    """The process group of the ranks that run a sharded model's forward together (world size > 1)."""

    group: Any  # a torch.distributed ProcessGroup; None: the default (world) group
    rank: int
    size: int
    device: torch.device = torch.device("cpu")  # where the checks' small tensors live (the group's backend)

    @classmethod
    def of(cls, group: Any = None) -> "Ranks":
        kind = collective_device_type(str(dist.get_backend(group)))
        device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        return cls(group=group, rank=dist.get_rank(group), size=dist.get_world_size(group), device=device)

    @property
    def first(self) -> int:
        """The global rank of the group's rank 0 (whose seed and timings every rank takes)."""
        return 0 if self.group is None else dist.get_global_rank(self.group, 0)

    def agree(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a picklable object: a seed, a cost model, a decision)."""
        box = [value]
        dist.broadcast_object_list(box, src=self.first, group=self.group, device=self.device)
        return box[0]

    def gather(self, values: Sequence[int]) -> list[list[int]]:
        """Every rank's `values` (the same count on every rank), by rank."""
        mine = torch.tensor(list(values), dtype=torch.long, device=self.device)  # (n,)
        every = [torch.empty_like(mine) for _ in range(self.size)]  # size x (n,)
        dist.all_gather(every, mine, group=self.group)
        return [t.tolist() for t in every]


def shared_ranks(group: Any) -> Ranks | None:
    """Ranks for `group` (None: the default group) when torch.distributed runs more than one rank, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    ranks = Ranks.of(group)
    return ranks if ranks.size > 1 else None


def _differing(rows: Sequence[Sequence[int]]) -> list[int]:
    """The ranks whose values differ from rank 0's."""
    return [r for r, values in enumerate(rows) if list(values) != list(rows[0])]


def confirm_same(ranks: Ranks | None, what: str, value: int, fix: str) -> None:
    """Raise RankMismatchError if `value` (a checksum of `what`) is not the same on every rank."""
    if ranks is None:
        return
    gathered = ranks.gather([value])
    differ = _differing(gathered)
    if differ:
        raise RankMismatchError(f"{what} differs between ranks: rank(s) {differ} hold another than rank 0's; {fix}")


def _confirm_rows(ranks: Ranks, step: int, what: str, rows: Sequence[int], per_row: Sequence[int],
                  extra: int = 0) -> list[list[int]]:
    """One all_gather of [step, row count, extra, digest of every row]; on a mismatch, a second one
    (every rank sees the same values, so every rank makes it) finds the first row that differs."""
    header = [step, len(rows), extra, digest([*rows, *per_row])]
    gathered = ranks.gather(header)
    firsts = [[g[0], g[1], g[3]] for g in gathered]  # the timing (extra) may differ; nothing else may
    differ = _differing(firsts)
    if not differ:
        return gathered
    counts = {r: g[1] for r, g in enumerate(gathered)}
    if len(set(counts.values())) > 1 or len({g[0] for g in gathered}) > 1:
        raise RankMismatchError(f"step {step}: the ranks disagree on {what}: step numbers "
                                f"{[g[0] for g in gathered]}, active row counts {list(counts.values())} by rank")
    detail = ranks.gather([*rows, *per_row])
    n = len(rows)
    for i in range(n):
        column = [[d[i], d[n + i]] for d in detail]
        bad = _differing(column)
        if bad:
            raise RankMismatchError(f"step {step}: the ranks disagree on {what} of row {rows[i]}: "
                                    f"rank(s) {bad} differ from rank 0 (the ranks' decisions have parted: "
                                    f"every rank must be given the same prompts, settings, processors, generator and cost_model)")
    raise RankMismatchError(f"step {step}: the ranks disagree on {what} (rank(s) {differ} differ from rank 0)")


def proposals_digest(tokens: Sequence[int], outputs: Sequence[int] | None, offsets: torch.Tensor | None = None,
                     visible: torch.Tensor | None = None) -> int:
    """What a row puts through the forward: its tokens, the logits it asks for, its layout (None: a chain, which
    its length sets; a prefill's (T, T) chain is not built just to be checked)."""
    layout = [] if offsets is None else [tensor_digest(offsets), tensor_digest(visible)]
    return digest([digest(tokens), digest(outputs or [], seed=1), *layout])


def confirm_proposals(ranks: Ranks | None, step: int, rows: Sequence[int], digests: Sequence[int]) -> None:
    """Before a step's forward: every rank puts the same rows' same tokens, layouts and outputs through it."""
    if ranks is not None:
        _confirm_rows(ranks, step, "what goes through the forward (the proposals)", rows, digests)


def confirm_commits(ranks: Ranks | None, step: int, rows: Sequence[int], committed: Sequence[Sequence[int]],
                    seconds: float) -> float:
    """After a step's commit: every rank committed the same tokens to the same rows. Returns the step's
    seconds as rank 0 measured them (what every rank's cost model observes), or `seconds` on one rank."""
    if ranks is None:
        return seconds
    gathered = _confirm_rows(ranks, step, "the committed tokens", rows, [digest(c) for c in committed],
                             extra=int(seconds * 1e9))
    return gathered[0][2] / 1e9
