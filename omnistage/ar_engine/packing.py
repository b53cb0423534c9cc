"""Linear layers with weights packed for this CPU, as ``torch.compile``'s freezing pass does.

oneDNN multiplies faster from a weight it has reordered into its own blocked layout once, ahead
of time, than from the plain row-major weight it must re-block on every call: on a 2-core AVX-512
machine, 10-20% on the matrix shapes of a decode step of a small model, more on wide ones.
``pack_linears`` swaps each ``nn.Linear`` of a module tree for a ``PackedLinear`` in place (the
plain weight is dropped, so memory stays the same unless the weight was shared, as a tied LM
head's is). It is idempotent: a model several engines share is packed once.

A packed call costs about 12 us more than a plain one whatever the shape, so a small weight stays
plain: below PACK_MIN_WEIGHTS elements (256x1024) the plain multiply was as fast or faster at 1, 8
and 64 rows on that machine (64x64: 2.5 against 14.3 us for one row; 256x256: 6 against 17 us).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
BATCH_HINT = 64  # rows the layout is tuned for; any number of rows works
PACK_MIN_WEIGHTS = 1 << 18


class PackedLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def worth_packing(linear: torch.nn.Module) -> bool:
    return (type(linear) is torch.nn.Linear and linear.weight.numel() >= PACK_MIN_WEIGHTS
            and can_pack(linear.weight.dtype, linear.weight.device))


def pack_linears(root: torch.nn.Module) -> int:
    """Replace every CPU ``nn.Linear`` under ``root`` (``root`` itself excepted) that oneDNN can
    pack and that is large enough to gain from it; returns how many were replaced."""
    swaps = [(parent, name, child) for parent in root.modules() for name, child in parent.named_children()
             if worth_packing(child)]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    if swaps:
        log.debug("packed %d linear layers for oneDNN", len(swaps))
    return len(swaps)
