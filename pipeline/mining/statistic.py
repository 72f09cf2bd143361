"""The one protocol of the streaming pass's statistics: ``add``, ``merge``, ``state``, ``from_state``, ``result``.

``topk.RunningTopK`` (the k best images of every channel), ``stats.UnitStats`` (a histogram per
channel) and ``pooled.PooledVectors`` (one row per image) are each a *mergeable* statistic of one
layer, in the style of davidbau/dissect's ``runningstats``. Why one protocol: checkpointing,
resume, the torchrun gather and the union behind ``mine merge`` / ``--update`` then treat every
statistic alike, "merge the states of each layer", instead of one hand-written copy per kind.

The contract every statistic keeps (``tests/test_statistic_protocol.py`` checks it against
brute-force references):

* ``add(*batch)`` folds a batch in (what a batch is, is the statistic's own).
* ``merge(other)`` folds in another statistic of the same layer. Adding parts to separate
  statistics and merging them equals adding everything to one, in any order and grouping.
* ``state()`` is a dict of CPU tensors (what a checkpoint saves); ``from_state(state)`` builds an
  equal statistic from it (on the CPU unless a device is given), so
  ``from_state(s.state()).state()`` equals ``s.state()`` exactly.
* ``result()`` is what the store is written from.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, TypeVar

import torch

S = TypeVar("S", bound="Statistic")


class Statistic(Protocol):
    def add(self, *batch: Any) -> None: ...

    def merge(self, other: Any) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    @classmethod
    def from_state(cls: type[S], state: Mapping, device: torch.device | str = "cpu") -> S: ...

    def result(self) -> Any: ...


def merge_all(into: S, others: Iterable[S]) -> S:
    """``into`` with every statistic of ``others`` merged in, in order; returns ``into``."""
    for other in others:
        into.merge(other)
    return into


def merge_states(into: S, states: Iterable[Mapping]) -> S:
    """``into`` with every ``state()`` of ``states`` (of ``into``'s kind) merged in, in order."""
    return merge_all(into, (type(into).from_state(s) for s in states))


def merge_layer_states(kind: type[S], many: Iterable[Mapping[str, Mapping]]) -> dict[str, dict]:
    """The union of several ``layer -> state()`` dicts of one ``kind``: layer -> merged state
    (layers in the order first met; each layer's states merged in the order given)."""
    many = list(many)
    out = {}
    for layer in dict.fromkeys(n for states in many for n in states):
        parts = [states[layer] for states in many if layer in states]
        out[layer] = merge_states(kind.from_state(parts[0]), parts[1:]).state()
    return out
