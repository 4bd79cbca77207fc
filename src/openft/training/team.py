"""The processes that train one job together: one (``SOLO``) or N data-parallel ranks.

A recipe is written once for any N. Every rank holds the whole model and
sees the whole global batch (the example order is a function of the seed
and epoch only); each rank computes the loss of its own contiguous share of
the batch, with the *global* batch's denominators, so the gradients summed
over ranks are exactly the one-worker gradients (up to float summation
order), and the optimizer steps of all ranks stay identical. That is what
DDP does; openft sums gradients with one all-reduce per step instead of
wrapping the model, because its loss runs the decoder directly (see
``common.label_logits``) and never calls the module's ``forward`` that DDP
hooks. Rank 0 alone validates, reports and saves; stop requests reach it and
it tells the others (:meth:`Team.agree`), so all ranks leave at one step.

The process group itself comes from Ray Train (gloo on CPU, NCCL on GPU);
nothing here starts processes.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch

T = TypeVar("T")

STOPS: tuple[str | None, ...] = (None, "pause", "cancel")


class Team:
    """This process's place among the ranks of one run."""

    def __init__(self, rank: int = 0, size: int = 1, device: torch.device | None = None):
        self.rank, self.size = rank, size
        self.device = device or torch.device("cpu")
        """Where collective tensors live (NCCL needs them on the GPU)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_process_group(cls) -> Team:
        """The team of an initialised ``torch.distributed`` process group."""
        import torch.distributed as dist

        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def share(self, items: list[T]) -> list[T]:
        """This rank's contiguous part of a global batch (maybe empty)."""
        if self.size == 1:
            return items
        per_rank = math.ceil(len(items) / self.size)
        return items[self.rank * per_rank : (self.rank + 1) * per_rank]

    def sum(self, value: float) -> float:
        """The sum of ``value`` over all ranks."""
        if self.size == 1:
            return float(value)
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def sync_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace each gradient by its sum over ranks (a rank with an empty
        share contributes zeros): one flat all-reduce."""
        if self.size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for parameter in parameters:
            n = parameter.numel()
            parameter.grad = flat[offset : offset + n].view_as(parameter).clone()
            offset += n

    def agree(self, stop: str | None) -> str | None:
        """Rank 0's stop request (None, "pause", "cancel"), on every rank."""
        if self.size == 1:
            return stop
        import torch.distributed as dist

        code = torch.tensor([STOPS.index(stop) if self.is_main else 0], device=self.device)
        dist.broadcast(code, src=0)
        return STOPS[int(code.item())]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (on every rank)."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out


SOLO = Team()
