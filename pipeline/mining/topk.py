"""Streaming per-channel top-k with deterministic tie-breaking.

One statistic of the protocol of ``statistic.py`` (``add`` / ``merge`` / ``state`` /
``from_state`` / ``result``): state is three (channels, k) tensors on the model's device,
so memory is O(channels x k) however many images stream past.

Order: larger value first, then smaller image key. Each image contributes at most
one candidate per channel (its spatial maximum), so the kept entries are k
*distinct* images and no two entries tie on both (``merge`` drops a repeated key;
``add`` would rank a repeated offer after the earlier one). Because the order is
total and the merge is associative, any batching, any shuffling, any resume point
and any sharding give the same result. Unused slots hold value -inf and key -1 (``EMPTY_KEY``) and always
sort last; they are never mistaken for an image.
"""
from __future__ import annotations

import torch

EMPTY_KEY = -1


class RunningTopK:
    FIELDS = ("values", "keys", "pos")  # the tensors of ``state()`` a checkpoint saves

    def __init__(self, channels: int, k: int, device: torch.device | str = "cpu") -> None:
        self.channels, self.k = channels, k
        self.values = torch.full((channels, k), float("-inf"), device=device)
        self.keys = torch.full((channels, k), EMPTY_KEY, dtype=torch.int64, device=device)
        self.pos = torch.full((channels, k), -1, dtype=torch.int64, device=device)
        self._cut: tuple | None = None  # ``_entry_cut``'s answer and the tensors it was read from

    def add(self, values: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor,
            entering: torch.Tensor | None = None) -> None:
        """Offer candidates: ``values``/``pos`` (B, channels), ``keys`` (B,) image keys, each
        image at most once per channel (the streaming pass skips seen keys; an image offered
        again ranks after its earlier offer of the same value); ``entering``:
        ``may_enter(values, keys)`` if the caller has it already."""
        b = values.shape[0]
        if b == 0:
            return
        v = torch.nan_to_num(values.detach().float(), nan=float("-inf")).T
        p = pos.T.to(torch.int64)
        keys = keys.to(self.keys.device, torch.int64).view(b)
        rows = None
        if v.device.type == "cpu":  # only the channels a candidate may enter (reading the mask is a sync on a GPU)
            rows = (self.may_enter(values, keys) if entering is None else entering).any(0).nonzero().view(-1)
            if len(rows) == 0:
                return
            if len(rows) == self.channels:
                rows = None
            else:
                v, p = v[rows], p[rows]
        self._offer(rows, v, keys, p)

    def _offer(self, rows: torch.Tensor | None, v: torch.Tensor, keys: torch.Tensor, p: torch.Tensor) -> None:
        """Merge a batch's candidates (R, B) (one image key per column) into the channels ``rows``
        (None: all). Why not ``_best``: its three stable sorts of every row were most of the
        ranking's cost; here one ``topk`` of a single int64 per entry orders them the same way
        (``_rank_keys``, ``_order_key``). Out of place, as ``_select``: a ``state()`` taken
        before (a checkpoint) must not change."""
        sv, sk, sp = (t if rows is None else t[rows] for t in (self.values, self.keys, self.pos))
        vals = torch.cat([sv, v], 1)
        order = _order_key(vals, _rank_keys(sk, keys)).topk(self.k, dim=1).indices
        kk = torch.cat([sk, keys.view(1, -1).expand(len(sk), -1)], 1)
        best = [t.gather(1, order) for t in (vals, kk, torch.cat([sp, p], 1))]
        if rows is None:
            self.values, self.keys, self.pos = best
        else:
            self.values, self.keys, self.pos = (t.index_put((rows,), n) for t, n in
                                                zip((self.values, self.keys, self.pos), best))
        if v.device.type == "cpu":  # (a host read: on a GPU the streaming pass never asks)
            self._entry_cut()

    def may_enter(self, values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, C) bool: the candidates (``values`` (B, C), image ``keys`` (B,)) that rank before
        their channel's k-th entry, i.e. enter the top-k; the others cannot, in any batch.

        Exact because an image is offered at most once per channel (seen keys are skipped), so a
        candidate never ties the k-th entry on both value and key, and position never decides.
        An empty slot ranks after every image of its value (-inf), as in ``_select``; a NaN
        ranks as -inf, and can only enter where a k-th entry is -inf (``_entry_cut``).
        """
        last_v, last_k, open_ = self._entry_cut()
        v = values if values.dtype == torch.float32 and not values.requires_grad else values.detach().float()
        if open_:
            v = torch.nan_to_num(v, nan=float("-inf"))
        if keys.dtype != torch.int64 or keys.device != last_k.device:
            keys = keys.to(last_k.device, torch.int64)
        return (v > last_v) | ((v == last_v) & (keys.view(-1, 1) < last_k))

    def _entry_cut(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Each channel's k-th value and key (an empty slot's key read as the largest key), and
        whether any k-th value is -inf: read once per state rather than per ``may_enter`` call.
        ``_offer`` reads it on CPU as soon as the state changes. Why: the streaming pass asks
        ``may_enter`` in a forward hook, right after a convolution has pushed the code of every
        small tensor operation out of the CPU's caches, where each costs several times what it
        costs in the loop over layers that ``add`` runs in."""
        if self._cut is None or self._cut[0] is not self.values or self._cut[1] is not self.keys:
            last_v, last_k = self.values[:, -1], self.keys[:, -1]
            last_k = last_k.masked_fill(last_k == EMPTY_KEY, torch.iinfo(torch.int64).max)
            self._cut = (self.values, self.keys, (last_v, last_k, bool((last_v == float("-inf")).any())))
        return self._cut[2]

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

    def state(self) -> dict[str, torch.Tensor]:
        """CPU copies of ``FIELDS`` and ``k``."""
        return {"values": self.values.cpu(), "keys": self.keys.cpu(), "pos": self.pos.cpu(), "k": torch.tensor(self.k)}

    @classmethod
    def from_state(cls, state, device: torch.device | str = "cpu") -> "RunningTopK":
        """The statistic ``state`` describes (``FIELDS``: tensors or arrays, (channels, k) each)."""
        values = torch.as_tensor(state["values"])
        t = cls(*values.shape, device=device)
        t.values, t.keys, t.pos = (torch.as_tensor(state[n]).to(device) for n in cls.FIELDS)
        return t

def _rank_keys(state_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(R, k + B) int64 ranks of the keys of ``state_keys`` (R, k) rows followed by the batch's
    ``keys`` (B,), in key order wherever it can matter, empty slots last, without sorting rows.

    A batch key of sorted rank r ranks (2r + 1) k; the state key in column j with a batch keys
    below it ranks 2 a k + j. So a state key and a batch key compare as their keys do (the state
    key first when equal: the earlier offer), two batch keys too, and two state keys of equal
    value too, since a sorted row lists equal values by key (then j rises with the key).
    """
    k, b = state_keys.shape[1], keys.numel()
    below, order = torch.sort(keys, stable=True)
    batch_rank = torch.empty_like(order)
    batch_rank[order] = torch.arange(b, device=keys.device)
    a = torch.searchsorted(below, state_keys.contiguous())
    ranks = (2 * a * k + torch.arange(k, device=keys.device)).masked_fill(state_keys == EMPTY_KEY, 2 * (b + 1) * k)
    return torch.cat([ranks, ((2 * batch_rank + 1) * k).view(1, b).expand(len(state_keys), b)], 1)


def _order_key(values: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """One int64 per entry, larger first in the order of the module docstring: the float32
    value's bits made monotonic (-0.0 counted as 0.0) above, the inverted key rank below."""
    bits = (values + 0.0).view(torch.int32)
    monotonic = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (monotonic.to(torch.int64) << 32) | (0x7FFFFFFF - ranks)
