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
float (only where a run's rows differ).

A batch is planned one batch row at a time (:func:`batch_plan`) and rows with the same plan run
together: in a left-padded batch every row's images sit at other positions, so one plan for the
whole batch would only find the pieces all rows share (mostly ``masked`` ones, scored in full); each
row's own plan keeps its structure, and its padding keys are skipped.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..policies import DENSE_CHUNK
from .common import batch_row
from .rows import FutureRows

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


class _Rows:
    """Rows of a mask, a block at a time: a bool ``[B, 1, Lq, Lk]`` tensor or a :class:`FutureRows`."""

    def __init__(self, mask: torch.Tensor | FutureRows) -> None:
        self.mask = mask
        if isinstance(mask, FutureRows):
            self.batch, self.lq, self.lk = mask.batch_size, mask.length, mask.kv_length
            self.device = mask.device
        else:
            self.batch, self.lq, self.lk = mask.shape[0], mask.shape[2], mask.shape[3]
            self.device = mask.device
        self.step = max(1, DENSE_CHUNK // max(self.batch * self.lk, 1))  # rows per evaluated chunk

    def get(self, start: int, stop: int) -> torch.Tensor:
        """bool ``[B, stop - start, Lk]``."""
        if isinstance(self.mask, FutureRows):
            return self.mask.allowed(start, stop)
        return self.mask[:, 0, start:stop]


def _runs(status: torch.Tensor, offset: int) -> list[tuple[int, int, int]]:
    """Contiguous runs ``(start, stop, status)`` of a 1-D status vector, shifted by ``offset``."""
    if status.numel() == 0:
        return []
    change = (status[1:] != status[:-1]).nonzero().flatten().tolist()
    bounds = [0] + [c + 1 for c in change] + [status.numel()]
    values = status[torch.tensor(bounds[:-1])].tolist()
    return [(offset + s, offset + e, v) for s, e, v in zip(bounds[:-1], bounds[1:], values, strict=True)]


def _column_status(rows: _Rows, start: int, stop: int) -> tuple[torch.Tensor, bool]:
    """Per key of rows ``start:stop``: ``_FULL``/``_MIXED``/``_SKIP`` (int8 ``[Lk]``), and whether the
    block's own square is exactly lower-triangular. Evaluated a chunk of rows at a time."""
    col_all = col_any = None
    tril = True
    for a in range(start, stop, rows.step):
        b = min(a + rows.step, stop)
        chunk = rows.get(a, b)
        c_all, c_any = chunk.all(dim=1).all(dim=0), chunk.any(dim=1).any(dim=0)
        col_all = c_all if col_all is None else col_all & c_all
        col_any = c_any if col_any is None else col_any | c_any
        if tril:
            diag = chunk[:, :, start:stop]
            lower = torch.arange(start, stop, device=rows.device)[None, :] <= torch.arange(a, b, device=rows.device)[:, None]
            tril = torch.equal(diag, lower.expand_as(diag))
    status = torch.where(col_all, _FULL, torch.where(col_any, _MIXED, _SKIP)).to(torch.int8)
    return status, tril


def _plan_block(rows: _Rows, start: int, stop: int, with_masks: bool = True) -> tuple[Piece, ...]:
    """Pieces of query rows ``start:stop``; ``masked`` pieces get their mask slice when ``with_masks``."""
    status, tril = _column_status(rows, start, stop)
    segments = _runs(status[:start], 0)
    if not (status[start:stop] == _MIXED).any():  # each key of the square is seen by all rows or none
        segments += _runs(status[start:stop], start)
    elif tril:
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
    block_rows = rows.get(start, stop) if with_masks and any(v == _MIXED for _, _, v in merged) else None
    pieces = []
    for s, e, v in merged:
        if v == _FULL:
            pieces.append(Piece(s, e, "full"))
        elif v == -1:
            pieces.append(Piece(s, e, "causal"))
        elif block_rows is None:
            pieces.append(Piece(s, e, "masked"))
        else:
            m = block_rows[:, None, :, s:e].contiguous()
            pieces.append(Piece(s, e, "masked", mask=m, row_any=m.any(-1)))
    return tuple(pieces)


_SAME, _GROW, _BREAK, _EITHER = 0, 1, 2, 3


def _transitions(rows: _Rows) -> list[int]:
    """Per row ``i >= 1``: ``_SAME`` (row equals row ``i-1``), ``_GROW`` (it adds only key ``i``), ``_BREAK``
    (anything else, in some batch row), or ``_EITHER`` (batch rows disagree between same and grow)."""
    lq, lk, device = rows.lq, rows.lk, rows.device
    kinds: list[int] = []
    for c0 in range(1, lq, rows.step):
        c1 = min(c0 + rows.step, lq)
        both = rows.get(c0 - 1, c1)
        cur, prev = both[:, 1:], both[:, :-1]  # [B, n, Lk]
        own = torch.arange(c0, c1, device=device).clamp(max=lk - 1)
        local = torch.arange(c1 - c0, device=device)
        inside = own >= torch.arange(c0, c1, device=device)  # key i exists
        diff = cur ^ prev
        gains_own = cur[:, local, own] & ~prev[:, local, own] & inside  # [B, n]
        diff[:, local, own] &= ~inside  # ignore key i itself ...
        other = diff.any(-1)  # ... any other difference breaks the run
        same = ~other & ~gains_own & (~inside | (cur[:, local, own] == prev[:, local, own]))
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


def row_runs(mask: torch.Tensor | FutureRows, max_rows: int | None = None) -> list[tuple[int, int]]:
    """Maximal runs of query rows that are all identical, or a causal staircase (each adds its own key).

    In such a run the keys outside the run's own square are the same for every row, and the square is
    full or lower-triangular. Runs longer than ``max_rows`` (if given) are cut. ``mask`` is bool
    ``[B, 1, Lq, Lk]`` or a :class:`FutureRows`; rows are compared a chunk at a time.
    """
    rows = mask if isinstance(mask, _Rows) else _Rows(mask)
    starts, run_kind = [0], None
    for i, kind in enumerate(_transitions(rows), start=1):
        if kind == _BREAK or (run_kind is not None and kind not in (run_kind, _EITHER)):
            starts.append(i)
            run_kind = None
        elif kind != _EITHER:
            run_kind = kind
    starts.append(rows.lq)
    step = max_rows or rows.lq
    runs = []
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        runs += [(a, min(a + step, e)) for a in range(s, e, step)]
    return runs


def plan(mask: torch.Tensor | FutureRows, block: int = DEFAULT_BLOCK) -> tuple[Block, ...]:
    """Split a mask into row runs and their key pieces.

    ``mask`` is a bool ``[B, 1, Lq, Lk]`` tensor or a :class:`FutureRows` (the mask of a prompt pass,
    evaluated a chunk of rows at a time: no ``Lq x Lk`` tensor is made). A run with a ``masked``
    piece is cut into blocks of at most ``block`` rows, which bounds the float mask SDPA makes of it
    to ``block x Lk`` elements.
    """
    if not isinstance(mask, FutureRows) and (mask.dim() != 4 or mask.shape[1] != 1 or mask.dtype != torch.bool):
        raise ValueError(
            f"blocked SDPA needs a bool mask [B, 1, Lq, Lk]; got {tuple(mask.shape)} {mask.dtype}"
        )
    rows = _Rows(mask)
    blocks = []
    for s, e in row_runs(rows):
        pieces = _plan_block(rows, s, e, with_masks=e - s <= block)
        if e - s > block and any(p.kind == "masked" for p in pieces):  # bound the per-call float mask
            blocks += [Block(a, min(a + block, e), _plan_block(rows, a, min(a + block, e))) for a in range(s, e, block)]
        else:
            blocks.append(Block(s, e, pieces))
    return tuple(blocks)


@dataclass(frozen=True)
class RowGroup:
    """Batch rows ``rows`` that share one plan; its masked pieces hold the masks of these rows, in order."""

    rows: tuple[int, ...]
    blocks: tuple[Block, ...]


def _batch_row(mask: torch.Tensor | FutureRows, b: int) -> torch.Tensor | FutureRows:
    if isinstance(mask, FutureRows):
        return mask.select(b)
    return batch_row(mask, b)


def _shape_of(blocks: tuple[Block, ...]) -> tuple:
    return tuple((blk.start, blk.stop, tuple((p.start, p.stop, p.kind) for p in blk.pieces)) for blk in blocks)


def _stacked(plans: list[tuple[Block, ...]]) -> tuple[Block, ...]:
    """One plan of the same shape for several batch rows: masked pieces get the rows' masks side by side."""
    if len(plans) == 1:
        return plans[0]
    blocks = []
    for parts in zip(*plans, strict=True):
        pieces = []
        for same in zip(*(blk.pieces for blk in parts), strict=True):
            p = same[0]
            if p.kind == "masked":
                p = Piece(p.start, p.stop, p.kind, torch.cat([x.mask for x in same]), torch.cat([x.row_any for x in same]))
            pieces.append(p)
        blocks.append(Block(parts[0].start, parts[0].stop, tuple(pieces)))
    return tuple(blocks)


def batch_plan(mask: torch.Tensor | FutureRows, block: int = DEFAULT_BLOCK) -> tuple[RowGroup, ...]:
    """:func:`plan` of each batch row of ``mask`` (bool ``[B, 1, Lq, Lk]`` or a :class:`FutureRows`), rows
    with the same pieces gathered into one :class:`RowGroup` (one group, the whole batch, when every
    row has the same structure, e.g. copies of one prompt)."""
    batch = mask.batch_size if isinstance(mask, FutureRows) else mask.shape[0]
    if batch == 1:
        return (RowGroup((0,), plan(mask, block)),)
    plans = [plan(_batch_row(mask, b), block) for b in range(batch)]
    groups: dict[tuple, list[int]] = {}
    for b, blocks in enumerate(plans):
        groups.setdefault(_shape_of(blocks), []).append(b)
    return tuple(RowGroup(tuple(rows), _stacked([plans[b] for b in rows])) for rows in groups.values())


_cache: dict[str, object] = {"ref": None, "version": None, "block": None, "plan": None}


def cached_plan(mask: torch.Tensor | FutureRows, block: int = DEFAULT_BLOCK) -> tuple[RowGroup, ...]:
    """:func:`batch_plan`, memoised for the last mask tensor seen (every layer of a forward passes the
    same tensor), or kept on the :class:`FutureRows` itself (which lives for one forward)."""
    if isinstance(mask, FutureRows):
        key = ("plan", block)
        if key not in mask.memo:
            mask.memo[key] = batch_plan(mask, block)
        return mask.memo[key]
    if mask.is_inference():  # made under torch.inference_mode (vLLM): no version counter to key a memo on
        return batch_plan(mask, block)
    ref = _cache["ref"]
    if ref is not None and ref() is mask and _cache["version"] == mask._version and _cache["block"] == block:
        return _cache["plan"]  # type: ignore[return-value]
    result = batch_plan(mask, block)
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


def _block_attention(q, k, v, pieces: tuple[Piece, ...], scale: float | None, with_lse: bool):
    """One block's output ``[B, H, n, D]`` (and, with ``with_lse``, its log-sum-exp float ``[B, H, n]``)."""
    if not pieces:
        empty = torch.full(q.shape[:-1], float("-inf"), dtype=_lse_dtype(q), device=q.device)
        return (torch.zeros_like(q), empty) if with_lse else torch.zeros_like(q)
    groups = _groups(pieces)
    if len(groups) == 1:
        return _group_call(q, k, v, *groups[0], scale, with_lse=with_lse)
    parts = [_group_call(q, k, v, kind, members, scale, with_lse=True) for kind, members in groups]
    lse = torch.stack([lse for _, lse in parts])  # [P, B, H, n]
    top = lse.amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(lse - top)  # [P, B, H, n]
    total = weights.sum(0)
    acc = torch.promote_types(q.dtype, torch.float32)
    out = sum(w[..., None].to(acc) * o.to(acc) for w, (o, _) in zip(weights, parts, strict=True))
    out = (out / torch.where(total > 0, total, torch.ones_like(total))[..., None]).to(q.dtype)
    return (out, top + torch.log(total)) if with_lse else out


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)


def blocked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | FutureRows,
    *,
    scale: float | None = None,
    block: int = DEFAULT_BLOCK,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``[B, H, Lq, D]``: the same result as SDPA under ``mask``, block by block.

    ``mask`` is bool ``[B, 1, Lq, Lk]`` or a :class:`FutureRows` (planned a chunk of rows at a time,
    never held whole; each batch row on its own, rows with the same plan computed together). ``k``/``v`` must already have ``H`` heads. Query row ``i`` is taken to sit at key
    position ``i`` (a prompt pass from an empty cache). Rows with no allowed key come out as zeros.
    With ``return_lse`` also the log-sum-exp of each row's scaled scores, float ``[B, H, Lq]``
    (float32 at least, ``-inf`` for rows with no key): CPU only (PyTorch's CPU flash kernel reports it).
    """
    groups = cached_plan(mask, block)
    if len(groups) == 1:
        return _planned(q, k, v, groups[0].blocks, scale, return_lse)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=_lse_dtype(q), device=q.device) if return_lse else None
    for group in groups:
        rows = torch.tensor(group.rows, device=q.device)
        part = _planned(q[rows], k[rows], v[rows], group.blocks, scale, return_lse)
        if return_lse:
            out[rows], lse[rows] = part
        else:
            out[rows] = part
    return (out, lse) if return_lse else out


def _planned(q, k, v, blocks: tuple[Block, ...], scale: float | None, return_lse: bool):
    """SDPA of the batch rows ``q`` (``[b, H, Lq, D]``) under their shared plan ``blocks``."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=_lse_dtype(q), device=q.device) if return_lse else None
    for blk in blocks:
        part = _block_attention(q[:, :, blk.start : blk.stop], k, v, blk.pieces, scale, return_lse)
        if return_lse:
            out[:, :, blk.start : blk.stop], lse[:, :, blk.start : blk.stop] = part
        else:
            out[:, :, blk.start : blk.stop] = part
    return (out, lse) if return_lse else out
