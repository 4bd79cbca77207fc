"""Int8 weights for CPU serving (``OPENFT_SERVING_DTYPE=int8``, an option).

A decode step reads every weight once, so on the CPU its speed is the speed
of streaming the weights: int8 weights are a quarter of float32's bytes. This
module gives a served float32 model's ``nn.Linear`` layers a copy of their
weights quantized per output channel (symmetric, one float scale per row),
packed for fbgemm (``torch.ops.quantized.linear_prepack``), and a forward
that runs ``torch.ops.quantized.linear_dynamic``: activations quantized to
uint8 on the fly, products in int8 with exact int32 sums (AVX2 or AVX-512
integer kernels), the result scaled back to float32. On a 2-core Xeon a
single row through the output head took 0.7 ms against float32's 2.7, and 16
rows 1.4 ms against 8.9.

``linear_dynamic`` picks one activation scale for the whole call, so a row's
rounding would depend on the rows batched with it. Each row is therefore
divided by its own largest magnitude first (and multiplied back after), and
every call carries one more row holding +1 and -1: the call's range is then
always exactly [-1, 1], each row is quantized as if alone, and int8 answers
are the same alone and batched, bit for bit.

The modules stay ``nn.Linear`` with their float32 weights (PEFT wraps them
and reads their shape; DoRA and merges read the weights), so LoRA adapters
serve on top exactly as on float32: an adapter's part is computed in float32
beside the int8 product. Memory is therefore the float32 model plus a quarter
(the float weights are not read while decoding, so they cost bytes, not
speed). Training, gradients and other dtypes take torch's float path.

torch 2.13 still ships these quantized tensors and fbgemm kernels but marks
them deprecated (pytorch/pytorch#184982, in favour of torchao); when the pin
moves past their removal, this module moves to torchao's int8 kernels.

Accuracy is the model at lower precision: ``bench/serving_int8.py`` measures
how many greedy answers equal float32's and whether a fine-tuned model keeps
its trained format (docs/serving-profile.md has a run).
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import torch


def _has_vnni() -> bool:
    try:
        flags = next(line for line in open("/proc/cpuinfo", encoding="ascii", errors="replace")
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_vnni" in flags


# Without VNNI, fbgemm multiplies u8 x s8 pairs into int16, which full-range activations can overflow:
# there activations get 7 bits. With AVX-512 VNNI the sums go straight to int32 and they get all 8
# (on SmolLM2-135M greedy answers then stay with float32's for 6.9 tokens on average instead of 2.6).
REDUCE_RANGE = not _has_vnni()
_ANCHORS: dict[int, torch.Tensor] = {}


def _anchor(width: int) -> torch.Tensor:
    """A row of ``width`` values whose smallest is -1 and largest +1: it fixes every call's range."""
    if width not in _ANCHORS:
        row = torch.zeros(1, width)
        row[0, 0], row[0, -1] = 1.0, -1.0
        _ANCHORS[width] = row
    return _ANCHORS[width]


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype is not torch.float32 or not x.is_cpu or torch.is_grad_enabled() or x.shape[-1] < 2:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    flat = x.reshape(-1, x.shape[-1])
    norms = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    rows = torch.cat([flat / norms, _anchor(flat.shape[1])])
    out = torch.ops.quantized.linear_dynamic(rows, self._openft_int8, REDUCE_RANGE)[:-1].mul_(norms)
    if self.bias is not None:
        out += self.bias.detach()
    return out.reshape(*x.shape[:-1], out.shape[-1])


def quantize_linears(model: Any) -> int:
    """Give ``model``'s float32 CPU ``nn.Linear`` layers int8 weights (per output channel) and a
    forward that uses them under no gradient; how many bytes the int8 weights and scales take."""
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in engines else "x86"
    added = 0
    from openft.serving.blas import float32_linears

    for module in float32_linears(model):
        if hasattr(module, "_openft_int8"):
            continue
        weight = module.weight.detach()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        with warnings.catch_warnings():  # torch 2.13 marks its quantized tensors deprecated (see the docstring)
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(weight, scales.double(),
                                                   torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
        module._openft_int8 = torch.ops.quantized.linear_prepack(quantized, None)  # the bias is added after
        module.forward = types.MethodType(_forward, module)
        added += weight.numel() + scales.numel() * 8
    return added
