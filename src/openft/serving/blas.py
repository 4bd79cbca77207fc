"""The serving engine's float32 matrix-vector products on the CPU through OpenBLAS.

A decode step of one request is one row of activations times every weight
matrix: matrix-vector products bound by how fast the weights stream from
memory. On the machine measured (docs/serving-profile.md) torch's CPU build
(MKL) streams them at half the rate numpy's OpenBLAS does (16 vs 33 GB/s).
So a served model's ``nn.Linear`` layers compute a single row's
``x @ W.T`` with ``numpy.matmul`` on the same memory (no copy of the
weights), when the model runs in float32 on the CPU under no gradient.
Several rows (a batch, a prompt) and anything else (training, autograd,
other dtypes, a GPU) take torch's own path, which is the faster one there.

OpenBLAS gets one thread: its own pool would fight torch's OpenMP threads
for the same cores between every pair of products (a 2-core machine fell
to a sixth of its speed); one thread streams 30 GB/s here (two: 37).

The products are the same mathematics; their rounding may differ from
torch's in the last bits, as it already does between one row and a batch
within torch.
"""

from __future__ import annotations

import types
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


def route_linears(model: Any) -> int:
    """Route ``model``'s float32 CPU ``nn.Linear`` layers' single rows through OpenBLAS (with one
    thread); how many layers were routed."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # torch's MKL is linked in and not among them
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype is torch.float32 and module.weight.is_cpu:
            module._openblas_weight_t = module.weight.detach().numpy().T  # a view: the weights are not copied
            module.forward = types.MethodType(_forward, module)
            routed += 1
    return routed
