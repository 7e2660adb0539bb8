"""Which samples each reader reads, and when: the epoch's shard order (a pure function of seed and epoch) and,
for an elastic resume, the micro-batches of the current epoch that the old ranks had not read yet (the shard
reader's module docstring explains the layout: readers = data-parallel ranks x workers, each reading every
n-th shard of its rank's share).
"""

from __future__ import annotations

import hashlib

from prealign_scale.data.shard_format import Manifest


def epoch_shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """Shard indices in the order epoch ``epoch`` visits them: a pure function of (seed, epoch)."""
    if not shuffle:
        return list(range(n_shards))

    def rank(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}/{epoch}/{i}".encode(), digest_size=8).digest()

    return sorted(range(n_shards), key=rank)


def remaining_epoch_batches(states: list[dict], manifest: Manifest) -> list[list[list[int]]]:
    """The micro-batches of the current epoch the ranks of `states` (one state per old rank, in rank order)
    have not read, as ``[shard index, sample index]`` lists, in the order the old run would have read them
    (module docstring). Their pending micro-batches come first; padding micro-batches are dropped."""
    cfg = states[0]["config"]
    world, n, b = int(cfg["dp_world_size"]), int(cfg["readers"]), int(cfg["micro_batch_size"])
    if len(states) != world:
        raise ValueError(f"ShardLoader states: {len(states)} given, the layout has dp_world_size={world}")
    pending = [s.get("pending", []) for s in states]
    out = [pending[r][p] for p in range(max(map(len, pending))) for r in range(world) if p < len(pending[r])]
    out = [mb for mb in out if mb]
    epoch, done = int(states[0]["epoch"]), int(states[0]["batches"])
    if done == 0:
        return out  # at an epoch boundary (after any pending micro-batches): nothing else of this epoch
    n_shards, per_shard = len(manifest.shards), int(manifest.shards[0]["samples"])
    order = epoch_shard_order(n_shards, int(cfg["seed"]), epoch, bool(cfg["shuffle_shards"]))
    batches_per_reader = (n_shards // (world * n)) * per_shard // b
    for i in range(done, n * batches_per_reader):
        for r in range(world):
            shards = order[r::world][i % n :: n]  # reader (r, i % n)'s shards; its batch i // n
            first = (i // n) * b
            out.append([[shards[s // per_shard], s % per_shard] for s in range(first, first + b)])
    return out
