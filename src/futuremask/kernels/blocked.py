"""Row-blocked SDPA for structured boolean masks: compute only the key ranges a block of rows needs.

PyTorch's CPU SDPA skips the upper triangle only for ``is_causal=True``; given a boolean mask it
scores every ``(i, j)`` pair and first turns the whole mask into a float ``[B, 1, L, Lk]`` tensor.
Policy masks are the causal mask plus a few rectangles (a visual row block sees the image, or the
whole prompt), so this kernel cuts the query rows into blocks and, once per mask (i.e. once per
forward, shared by every layer), splits each block's keys into pieces:

* ``full``   -- every row of the block attends every key of the piece: SDPA without a mask;
* ``causal`` -- the block's own diagonal square, lower-triangular: SDPA with ``is_causal=True``;
* ``masked`` -- anything else: SDPA with that small slice of the mask;
* keys no row of the block attends are skipped.

The pieces of a run are gathered into at most three SDPA calls (all full pieces side by side, the
causal square, all masked pieces side by side), combined exactly through their log-sum-exp
(``softmax`` over the union of disjoint key sets); a run needing one call makes one plain call.
The work done is then the attended pairs, and no mask larger than ``block x Lk`` is converted to
float (only where a run's rows differ, e.g. padding in a batch).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BLOCK = 1024
MAX_PIECES = 8
_FULL, _SKIP, _MIXED = 2, 0, 1


@dataclass(frozen=True)
class Piece:
    """Keys ``start:stop`` for one row block; ``kind`` is ``full``, ``causal`` or ``masked``.

    ``mask`` (bool ``[B, 1, n, stop - start]``) and ``row_any`` (bool ``[B, 1, n]``) are set for ``masked``.
    """

    start: int
    stop: int
    kind: str
    mask: torch.Tensor | None = None
    row_any: torch.Tensor | None = None


@dataclass(frozen=True)
class Block:
    """Query rows ``start:stop`` and the key pieces they attend."""

    start: int
    stop: int
    pieces: tuple[Piece, ...]


def _runs(status: torch.Tensor, offset: int) -> list[tuple[int, int, int]]:
    """Contiguous runs ``(start, stop, status)`` of a 1-D status vector, shifted by ``offset``."""
    if status.numel() == 0:
        return []
    change = (status[1:] != status[:-1]).nonzero().flatten().tolist()
    bounds = [0] + [c + 1 for c in change] + [status.numel()]
    values = status[torch.tensor(bounds[:-1])].tolist()
    return [(offset + s, offset + e, v) for s, e, v in zip(bounds[:-1], bounds[1:], values, strict=True)]


def _plan_block(rows: torch.Tensor, start: int, stop: int) -> tuple[Piece, ...]:
    """Pieces of one block; ``rows`` is bool ``[B, n, Lk]`` (the block's rows of the mask)."""
    n = stop - start
    col_all = rows.all(dim=1).all(dim=0)
    col_any = rows.any(dim=1).any(dim=0)
    status = torch.where(col_all, _FULL, torch.where(col_any, _MIXED, _SKIP)).to(torch.int8)
    diag = rows[:, :, start:stop]
    segments = _runs(status[:start], 0)
    if not (status[start:stop] == _MIXED).any():  # each key of the square is seen by all rows or none
        segments += _runs(status[start:stop], start)
    elif torch.equal(diag, torch.ones(n, n, dtype=torch.bool, device=rows.device).tril().expand_as(diag)):
        segments.append((start, stop, -1))  # the causal square
    else:
        segments.append((start, stop, _MIXED))
    segments += _runs(status[stop:], stop)
    merged: list[list[int]] = []
    for s, e, v in segments:
        if v == _SKIP:
            continue
        if merged and merged[-1][1] == s and merged[-1][2] == v and v in (_FULL, _MIXED):
            merged[-1][1] = e
        else:
            merged.append([s, e, v])
    if len(merged) > MAX_PIECES:  # too fragmented: one masked piece over the span
        merged = [[merged[0][0], merged[-1][1], _MIXED]]
    pieces = []
    for s, e, v in merged:
        if v == _FULL:
            pieces.append(Piece(s, e, "full"))
        elif v == -1:
            pieces.append(Piece(s, e, "causal"))
        else:
            m = rows[:, None, :, s:e].contiguous()
            pieces.append(Piece(s, e, "masked", mask=m, row_any=m.any(-1)))
    return tuple(pieces)


_SAME, _GROW, _BREAK, _EITHER = 0, 1, 2, 3


def _transitions(mask: torch.Tensor, chunk: int) -> list[int]:
    """Per row ``i >= 1``: ``_SAME`` (row equals row ``i-1``), ``_GROW`` (it adds only key ``i``), ``_BREAK``
    (anything else, in some batch row), or ``_EITHER`` (batch rows disagree between same and grow)."""
    lq, lk = mask.shape[2], mask.shape[3]
    kinds: list[int] = []
    for c0 in range(1, lq, chunk):
        c1 = min(c0 + chunk, lq)
        rows, prev = mask[:, 0, c0:c1], mask[:, 0, c0 - 1 : c1 - 1]  # [B, n, Lk]
        own = torch.arange(c0, c1, device=mask.device).clamp(max=lk - 1)
        local = torch.arange(c1 - c0, device=mask.device)
        inside = own >= torch.arange(c0, c1, device=mask.device)  # key i exists
        diff = rows ^ prev
        gains_own = rows[:, local, own] & ~prev[:, local, own] & inside  # [B, n]
        diff[:, local, own] &= ~inside  # ignore key i itself ...
        other = diff.any(-1)  # ... any other difference breaks the run
        same = ~other & ~gains_own & (~inside | (rows[:, local, own] == prev[:, local, own]))
        grow = ~other & gains_own
        kind = torch.full_like(other, _BREAK, dtype=torch.int8)
        kind[same] = _SAME
        kind[grow] = _GROW
        agree = (kind == kind[:1]).all(0)
        broken = (kind == _BREAK).any(0)
        merged = torch.where(
            agree, kind[0], torch.full_like(kind[0], _EITHER)
        )  # batch rows disagree (padding)
        kinds += torch.where(broken, torch.full_like(merged, _BREAK), merged).tolist()
    return kinds


def row_runs(mask: torch.Tensor, max_rows: int | None = None, chunk: int = 1024) -> list[tuple[int, int]]:
    """Maximal runs of query rows that are all identical, or a causal staircase (each adds its own key).

    In such a run the keys outside the run's own square are the same for every row, and the square is
    full or lower-triangular. Runs longer than ``max_rows`` (if given) are cut. ``mask`` is bool
    ``[B, 1, Lq, Lk]``; rows are compared ``chunk`` at a time.
    """
    lq = mask.shape[2]
    starts, run_kind = [0], None
    for i, kind in enumerate(_transitions(mask, chunk), start=1):
        if kind == _BREAK or (run_kind is not None and kind not in (run_kind, _EITHER)):
            starts.append(i)
            run_kind = None
        elif kind != _EITHER:
            run_kind = kind
    starts.append(lq)
    step = max_rows or lq
    runs = []
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        runs += [(a, min(a + step, e)) for a in range(s, e, step)]
    return runs


def plan(mask: torch.Tensor, block: int = DEFAULT_BLOCK) -> tuple[Block, ...]:
    """Split a bool mask ``[B, 1, Lq, Lk]`` into row runs and their key pieces.

    A run with a ``masked`` piece is cut into blocks of at most ``block`` rows, which bounds the float
    mask SDPA makes of it to ``block x Lk`` elements.
    """
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.dtype != torch.bool:
        raise ValueError(
            f"blocked SDPA needs a bool mask [B, 1, Lq, Lk]; got {tuple(mask.shape)} {mask.dtype}"
        )
    blocks = []
    for s, e in row_runs(mask, mask.shape[2]):
        pieces = _plan_block(mask[:, 0, s:e], s, e)
        if e - s > block and any(p.kind == "masked" for p in pieces):  # bound the per-call float mask
            blocks += [
                Block(
                    a, min(a + block, e), _plan_block(mask[:, 0, a : min(a + block, e)], a, min(a + block, e))
                )
                for a in range(s, e, block)
            ]
        else:
            blocks.append(Block(s, e, pieces))
    return tuple(blocks)


_cache: dict[str, object] = {"ref": None, "version": None, "block": None, "plan": None}


def cached_plan(mask: torch.Tensor, block: int = DEFAULT_BLOCK) -> tuple[Block, ...]:
    """:func:`plan`, memoised for the last mask seen (every layer of a forward passes the same tensor)."""
    ref = _cache["ref"]
    if ref is not None and ref() is mask and _cache["version"] == mask._version and _cache["block"] == block:
        return _cache["plan"]  # type: ignore[return-value]
    result = plan(mask, block)
    _cache.update(ref=weakref.ref(mask), version=mask._version, block=block, plan=result)
    return result


def _keys(k: torch.Tensor, v: torch.Tensor, pieces: list[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values of the pieces, side by side along the key axis (a view for a single piece)."""
    if len(pieces) == 1:
        p = pieces[0]
        return k[:, :, p.start : p.stop], v[:, :, p.start : p.stop]
    idx = torch.cat([torch.arange(p.start, p.stop, device=k.device) for p in pieces])
    return k.index_select(2, idx), v.index_select(2, idx)


def _groups(pieces: tuple[Piece, ...]) -> list[tuple[str, list[Piece]]]:
    """The pieces gathered into at most three SDPA calls: full ones, the causal square, masked ones."""
    groups = []
    for kind in ("full", "causal", "masked"):
        members = [p for p in pieces if p.kind == kind]
        if members:
            groups.append((kind, members))
    return groups


def _group_call(q, k, v, kind: str, members: list[Piece], scale: float | None, with_lse: bool):
    """SDPA of ``q`` over one group's keys: ``out`` or, with ``with_lse``, ``(out, lse float [B, H, n])``."""
    ks, vs = _keys(k, v, members)
    mask = row_any = None
    if kind == "masked":
        mask = members[0].mask if len(members) == 1 else torch.cat([p.mask for p in members], dim=-1)
        row_any = mask.any(-1)
    if not with_lse:
        return F.scaled_dot_product_attention(
            q, ks, vs, attn_mask=mask, is_causal=kind == "causal", scale=scale
        )
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, ks, vs, 0.0, kind == "causal", attn_mask=bias, scale=scale
    )
    if row_any is not None:  # rows with no key in this group: SDPA reports lse 0; make it -inf
        lse = lse.masked_fill(~row_any, float("-inf"))
    return out, lse


def _block_attention(q, k, v, pieces: tuple[Piece, ...], scale: float | None) -> torch.Tensor:
    if not pieces:
        return torch.zeros_like(q)
    groups = _groups(pieces)
    if len(groups) == 1:
        return _group_call(q, k, v, *groups[0], scale, with_lse=False)
    parts = [_group_call(q, k, v, kind, members, scale, with_lse=True) for kind, members in groups]
    lse = torch.stack([lse for _, lse in parts])  # [P, B, H, n]
    top = lse.amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(lse - top)  # [P, B, H, n]
    total = weights.sum(0)
    out = sum(w[..., None] * o.float() for w, (o, _) in zip(weights, parts, strict=True))
    out = out / torch.where(total > 0, total, torch.ones_like(total))[..., None]
    return out.to(q.dtype)


def blocked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float | None = None,
    block: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """``[B, H, Lq, D]``: the same result as SDPA under ``mask`` (bool ``[B, 1, Lq, Lk]``), block by block.

    ``k``/``v`` must already have ``H`` heads. Query row ``i`` is taken to sit at key position ``i``
    (a prompt pass from an empty cache). Rows with no allowed key come out as zeros.
    """
    blocks = cached_plan(mask, block)
    out = torch.empty_like(q)
    for blk in blocks:
        out[:, :, blk.start : blk.stop] = _block_attention(
            q[:, :, blk.start : blk.stop], k, v, blk.pieces, scale
        )
    return out
