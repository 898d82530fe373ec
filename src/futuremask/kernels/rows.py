"""Row-wise views of a prompt pass's masks, evaluated a block of rows at a time (never ``L x L`` at once).

The kernels need, for a block of query rows, their causal keys and their extra future keys. Held
densely these are ``[B, L, L]`` bool tensors (64 MiB each at 8k tokens, 1 GiB at 32k);
:class:`FutureRows` keeps the policy's overlay function instead and evaluates the rows a kernel asks
for: the merge kernel its future keys, blocked SDPA's plan the allowed keys (base or future).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..policies import DENSE_CHUNK
from .common import batch_row

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FutureRows:
    """The future keys ``overlay(i, j) and not base(i, j)`` of a prompt pass of ``length`` positions.

    Attributes:
        overlay: a ``mask_mod`` ``(b, h, q, kv) -> bool`` of the extra pairs a policy allows.
        base: bool ``[B, 1, L, Lk]`` (``Lk >= L``), the keys each row attends; None means exactly causal
            (``j <= i``, no padding), as SDPA's ``is_causal``.
        length: ``L``, the number of query rows and of prompt keys.
        batch_size: ``B``.
        on: the device of the layout (used when ``base`` is None).
        kv: the number of key slots when ``base`` is None (default ``length``; more with a static cache,
            whose slots after the prompt are never attended here).
    """

    overlay: MaskMod
    base: torch.Tensor | None
    length: int
    batch_size: int
    on: torch.device | None = None
    kv: int | None = None
    _found: dict = field(default_factory=dict, compare=False, repr=False)  # b -> rows with a future
    memo: dict = field(default_factory=dict, compare=False, repr=False)  # per-forward results (plans)

    @property
    def device(self) -> torch.device:
        if self.base is not None:
            return self.base.device
        return self.on if self.on is not None else torch.device("cpu")

    @property
    def kv_length(self) -> int:
        """``Lk``: the keys of the base mask (more than ``L`` with a static cache)."""
        if self.base is not None:
            return self.base.shape[-1]
        return self.length if self.kv is None else self.kv

    def select(self, b: int) -> FutureRows:
        """Batch row ``b`` alone: the same rows as a :class:`FutureRows` of batch size 1 (for per-row plans)."""
        overlay = self.overlay

        def one(bb, h, q, kv):
            return overlay(bb + b, h, q, kv)

        base = None if self.base is None else batch_row(self.base, b)
        return FutureRows(one, base, self.length, 1, on=self.on, kv=self.kv)

    def allowed(self, start: int, stop: int) -> torch.Tensor:
        """bool ``[B, stop - start, Lk]``: the keys query rows ``start:stop`` attend (base or future)."""
        device = self.device
        q = torch.arange(start, stop, device=device)[None, :, None]
        keys = torch.arange(self.length, device=device)[None, None, :]
        b = torch.arange(self.batch_size, device=device)[:, None, None]
        extra = self.overlay(b, torch.zeros((), dtype=torch.long, device=device), q, keys)
        base = self.base[:, 0, start:stop, : self.length] if self.base is not None else keys <= q
        out = (base | extra).expand(self.batch_size, stop - start, self.length)
        if self.kv_length > self.length:  # static-cache slots after the prompt: only the base decides
            tail = self.base[:, 0, start:stop, self.length :] if self.base is not None else torch.zeros(
                self.batch_size, stop - start, self.kv_length - self.length, dtype=torch.bool, device=device)
            out = torch.cat([out, tail], dim=-1)
        return out

    def dense(self) -> torch.Tensor:
        """bool ``[B, 1, L, Lk]``: the whole mask, built once and kept (for kernels that need a tensor)."""
        if "dense" not in self.memo:
            out = torch.empty(self.batch_size, 1, self.length, self.kv_length, dtype=torch.bool, device=self.device)
            step = max(1, DENSE_CHUNK // max(self.batch_size * self.kv_length, 1))
            for start in range(0, self.length, step):
                stop = min(start + step, self.length)
                out[:, 0, start:stop] = self.allowed(start, stop)
            self.memo["dense"] = out
        return self.memo["dense"]

    def base_rows(self, b: int, rows: torch.Tensor) -> torch.Tensor:
        """bool ``[R, L]``: the attended keys of query ``rows`` (long ``[R]``) of batch row ``b``."""
        if self.base is not None:
            return self.base[b, 0, rows, : self.length]
        keys = torch.arange(self.length, device=rows.device)
        return keys[None, :] <= rows[:, None]

    def rows(self, b: int, rows: torch.Tensor) -> torch.Tensor:
        """bool ``[R, L]``: the future keys of query ``rows`` (long ``[R]``) of batch row ``b``."""
        keys = torch.arange(self.length, device=rows.device)
        bb = torch.tensor(b, device=rows.device)
        extra = self.overlay(
            bb, torch.zeros((), dtype=torch.long, device=rows.device), rows[:, None], keys[None, :]
        )
        return extra.expand(rows.numel(), self.length) & ~self.base_rows(b, rows)

    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base, future)``, bool ``[B, L, L]`` each: every row's attended and future keys (for small passes)."""
        keys = torch.arange(self.length, device=self.device)
        if self.base is None:
            base = (keys[None, :] <= keys[:, None]).expand(self.batch_size, -1, -1)
        else:
            base = self.base[:, 0, :, : self.length].expand(self.batch_size, -1, -1)
        return base, self._future_of_every_row(base)

    def _future_of_every_row(self, base: torch.Tensor) -> torch.Tensor:
        """bool ``[B, L, L]``: the future keys of every row, given their attended keys ``base``."""
        return self.allowed(0, self.length)[..., : self.length] & ~base

    def rows_with_future(self, b: int, device: torch.device | str, chunk: int = 2**22) -> torch.Tensor:
        """long ``[n]``: the query positions of batch row ``b`` that have at least one future key.

        Computed once per batch row and kept: every layer of the forward asks the same question.
        """
        if b in self._found:
            return self._found[b]
        step = max(1, chunk // max(self.length, 1))
        found = []
        for start in range(0, self.length, step):
            rows = torch.arange(start, min(start + step, self.length), device=device)
            found.append(rows[self.rows(b, rows).any(-1)])
        result = torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=device)
        self._found[b] = result
        return result
