"""The serving engine's float32 matrix-vector products on the CPU through OpenBLAS, where faster.

A decode step of one request is one row of activations times every weight
matrix: matrix-vector products bound by how fast the weights stream from
memory. Which library streams them faster depends on the CPU: on an AMD EPYC
(docs/serving-profile.md) torch's CPU build (MKL) reached half the rate of
numpy's OpenBLAS with one thread (16 vs 33 GB/s); on an Intel Xeon with
AVX-512 torch's two threads were 1.6x faster than that one OpenBLAS thread.
So :func:`openblas_is_faster` times both on the loaded model's own weights
(one pass of every matrix, as a decode step reads them, best of three, a
fraction of a second at load) and the generator routes only when OpenBLAS
wins by :data:`MARGIN`: then :func:`route_linears` makes the ``nn.Linear``
layers compute a single row's ``x @ W.T`` with ``numpy.matmul`` on the same
memory (no copy of the weights), when the model runs in float32 on the CPU
under no gradient. Several rows (a batch, a prompt) and anything else
(training, autograd, other dtypes, a GPU) take torch's own path, which is
the faster one there.

OpenBLAS gets one thread: its own pool would fight torch's OpenMP threads
for the same cores between every pair of products (a 2-core machine fell
to a sixth of its speed); one thread streams 30 GB/s here (two: 37).

The products are the same mathematics; their rounding may differ from
torch's in the last bits, as it already does between one row and a batch
within torch.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype is not torch.float32 or not x.is_cpu or torch.is_grad_enabled() or x.numel() != x.shape[-1]:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    out = torch.from_numpy(np.matmul(x.detach().contiguous().numpy(), self._openblas_weight_t))
    if self.bias is not None:
        out += self.bias.detach()
    return out


MARGIN = 0.9  # OpenBLAS must take under 90% of torch's time: a near tie keeps torch's path


@dataclass(frozen=True)
class SingleRowTiming:
    """One pass of a model's single-row products on each library, in seconds (the best of several)."""

    torch_seconds: float
    openblas_seconds: float

    @property
    def openblas_wins(self) -> bool:
        return self.openblas_seconds < MARGIN * self.torch_seconds


def float32_linears(model: Any) -> list[torch.nn.Linear]:
    """The model's own float32 CPU ``nn.Linear`` layers: not an adapter's matrices (PEFT's ``lora_*``),
    which may have been loaded meanwhile and stay as they are."""
    return [module for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and module.weight.dtype is torch.float32 and module.weight.is_cpu
            and "lora_" not in name]


def openblas_is_faster(model: Any, passes: int = 3) -> SingleRowTiming:
    """Time a single row through every float32 linear layer of ``model`` on torch and on OpenBLAS
    (one thread), alternating ``passes`` times: what a decode step of one request costs on each."""
    from threadpoolctl import threadpool_limits

    weights = [m.weight.detach() for m in float32_linears(model)]
    rows = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    best = {"torch": float("inf"), "openblas": float("inf")}
    with torch.inference_mode(), threadpool_limits(limits=1, user_api="blas"):
        for _ in range(passes):
            began = time.perf_counter()
            for weight in weights:
                torch.nn.functional.linear(rows[weight.shape[1]], weight)
            best["torch"] = min(best["torch"], time.perf_counter() - began)
            began = time.perf_counter()
            for weight in weights:
                np.matmul(rows[weight.shape[1]].numpy(), weight.numpy().T)
            best["openblas"] = min(best["openblas"], time.perf_counter() - began)
    return SingleRowTiming(best["torch"], best["openblas"])


def route_linears(model: Any) -> int:
    """Route ``model``'s float32 CPU ``nn.Linear`` layers' single rows through OpenBLAS (with one
    thread); how many layers were routed."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # torch's MKL is linked in and not among them
    routed = 0
    for module in float32_linears(model):
        module._openblas_weight_t = module.weight.detach().numpy().T  # a view: the weights are not copied
        module.forward = types.MethodType(_forward, module)
        routed += 1
    return routed
