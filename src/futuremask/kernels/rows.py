"""Row-wise views of a prompt pass's masks, evaluated a block of rows at a time (never ``L x L`` at once).

The merge kernel needs, for a chunk of query rows, their causal keys and their extra future keys.
Held densely these are two ``[B, L, L]`` bool tensors (128 MiB at 8k tokens); :class:`FutureRows`
keeps the policy's overlay function instead and evaluates the rows the kernel asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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
    """

    overlay: MaskMod
    base: torch.Tensor | None
    length: int
    batch_size: int
    _found: dict = field(default_factory=dict, compare=False, repr=False)  # b -> rows with a future

    @property
    def device(self) -> torch.device:
        return self.base.device if self.base is not None else torch.device("cpu")

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
