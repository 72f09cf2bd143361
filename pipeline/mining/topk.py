"""Streaming per-channel top-k with deterministic tie-breaking.

One small running statistic in the style of ``add`` / ``result`` /
``state_dict`` / ``load_state_dict``: state is three (channels, k) tensors on the
model's device, so memory is O(channels x k) however many images stream past.

Order: larger value first, then smaller image key, then smaller position. Each
image contributes at most one candidate per channel (its spatial maximum), so the
kept entries are k *distinct* images. Because the order is total and the merge is
associative, any batching, any shuffling, any resume point and any sharding give
the same result. Unused slots hold value -inf and key -1 (``EMPTY_KEY``) and always
sort last; they are never mistaken for an image.
"""
from __future__ import annotations

import torch

EMPTY_KEY = -1


class RunningTopK:
    def __init__(self, channels: int, k: int, device: torch.device | str = "cpu") -> None:
        self.channels, self.k = channels, k
        self.values = torch.full((channels, k), float("-inf"), device=device)
        self.keys = torch.full((channels, k), EMPTY_KEY, dtype=torch.int64, device=device)
        self.pos = torch.full((channels, k), -1, dtype=torch.int64, device=device)

    def add(self, values: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor,
            entering: torch.Tensor | None = None) -> None:
        """Offer candidates: ``values``/``pos`` (B, channels), ``keys`` (B,) image keys;
        ``entering``: ``may_enter(values, keys)`` if the caller has it already."""
        b = values.shape[0]
        if b == 0:
            return
        v = torch.nan_to_num(values.detach().float(), nan=float("-inf")).T
        kk = keys.to(self.keys.device, torch.int64).view(1, b).expand(self.channels, b)
        p = pos.T.to(torch.int64)
        if v.device.type == "cpu":  # only the channels a candidate may enter (reading the mask is a sync on a GPU)
            rows = (self.may_enter(values, keys) if entering is None else entering).any(0).nonzero().view(-1)
            if len(rows) < self.channels:
                return self._select_rows(rows, v[rows], kk[rows], p[rows])
        self._select(torch.cat([self.values, v], 1), torch.cat([self.keys, kk], 1), torch.cat([self.pos, p], 1))

    def may_enter(self, values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, C) bool: the candidates (``values`` (B, C), image ``keys`` (B,)) that rank before
        their channel's k-th entry, i.e. enter the top-k; the others cannot, in any batch.

        Exact because an image is offered at most once per channel (seen keys are skipped), so a
        candidate never ties the k-th entry on both value and key, and position never decides.
        An empty slot ranks after every image of its value (-inf), as in ``_select``.
        """
        v = torch.nan_to_num(values.detach().float(), nan=float("-inf"))
        last_v, last_k = self.values[:, -1], self.keys[:, -1]
        last_k = last_k.masked_fill(last_k == EMPTY_KEY, torch.iinfo(torch.int64).max)
        k = keys.to(last_k.device, torch.int64).view(-1, 1)
        return (v > last_v) | ((v == last_v) & (k < last_k))

    def _select_rows(self, rows: torch.Tensor, v: torch.Tensor, kk: torch.Tensor, p: torch.Tensor) -> None:
        """``_select`` for the channels ``rows`` only. Why: once the top-k are full most channels
        have no candidate that ``may_enter``; they keep their entries, and their sorts were most of
        the ranking's cost."""
        if len(rows) == 0:
            return
        best = self._best(torch.cat([self.values[rows], v], 1), torch.cat([self.keys[rows], kk], 1),
                          torch.cat([self.pos[rows], p], 1))
        # out of place, as ``_select``: a ``state_dict()`` taken before (a checkpoint) must not change
        self.values, self.keys, self.pos = (t.index_put((rows,), b) for t, b in
                                            zip((self.values, self.keys, self.pos), best))

    def merge(self, other: "RunningTopK") -> None:
        """Fold another statistic in (disjoint or overlapping image sets).

        The same image key can appear on both sides (overlapping shards); it is
        kept once so the result equals one run over the union.
        """
        if (other.channels, other.k) != (self.channels, self.k):
            raise ValueError("cannot merge top-k of different shapes")
        v = torch.cat([self.values, other.values.to(self.values.device)], 1)
        kk = torch.cat([self.keys, other.keys.to(self.keys.device)], 1)
        p = torch.cat([self.pos, other.pos.to(self.pos.device)], 1)
        # Drop repeated keys in a row: sort by key, blank every repeat but the best.
        order = torch.argsort(v, dim=1, descending=True, stable=True)
        v, kk, p = v.gather(1, order), kk.gather(1, order), p.gather(1, order)
        order = torch.argsort(kk, dim=1, stable=True)
        v, kk, p = v.gather(1, order), kk.gather(1, order), p.gather(1, order)
        dup = torch.zeros_like(kk, dtype=torch.bool)
        dup[:, 1:] = (kk[:, 1:] == kk[:, :-1]) & (kk[:, 1:] != EMPTY_KEY)
        v = v.masked_fill(dup, float("-inf"))
        p = p.masked_fill(dup, -1)
        kk = kk.masked_fill(dup, EMPTY_KEY)
        self._select(v, kk, p)

    def _select(self, v: torch.Tensor, kk: torch.Tensor, p: torch.Tensor) -> None:
        self.values, self.keys, self.pos = self._best(v, kk, p)

    def _best(self, v: torch.Tensor, kk: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The first k of each row of (values, keys, positions) in the order of the module docstring."""
        # Lexicographic (value desc, key asc, pos asc) by stable sorts, least significant first.
        # Empty slots sort after every real key among equal values.
        kk_order = kk.masked_fill(kk == EMPTY_KEY, torch.iinfo(torch.int64).max)
        cols = [v, kk, p, kk_order]
        for which, desc in ((2, False), (3, False), (0, True)):
            order = torch.argsort(cols[which], dim=1, descending=desc, stable=True)
            cols = [c.gather(1, order) for c in cols]
        return tuple(c[:, : self.k].contiguous() for c in cols[:3])

    def result(self) -> dict[str, torch.Tensor]:
        """CPU copies: values (-inf where empty), keys (-1 where empty), flat positions."""
        return {"values": self.values.cpu(), "keys": self.keys.cpu(), "pos": self.pos.cpu()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.cpu(), "keys": self.keys.cpu(), "pos": self.pos.cpu(), "k": torch.tensor(self.k)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        dev = self.values.device
        self.values, self.keys, self.pos = (state[n].to(dev) for n in ("values", "keys", "pos"))
        self.channels, self.k = self.values.shape
