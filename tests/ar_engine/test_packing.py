"""oneDNN-packed linear layers against torch's own."""
import torch

from omnistage.ar_engine.packing import PACK_MIN_WEIGHTS, PackedLinear, can_pack, pack_linears


def test_packed_linear_equals_linear_for_any_row_count():
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(96, 160)
    torch.nn.init.normal_(linear.weight, generator=g)
    packed = PackedLinear(linear)
    for rows in (1, 7, 64, 300):  # the layout is tuned for 64 rows; every count must work
        x = torch.randn(1, rows, 96, generator=g)
        assert torch.allclose(packed(x), linear(x), atol=1e-4, rtol=1e-5), rows


def test_pack_linears_replaces_each_large_linear_once():
    wide = PACK_MIN_WEIGHTS // 256
    model = torch.nn.Sequential(torch.nn.Linear(256, wide), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Linear(wide, 256), torch.nn.Linear(256, 8)))
    x = torch.randn(3, 256)
    want = model(x)
    assert pack_linears(model) == 2
    assert pack_linears(model) == 0  # a model shared by several engines is packed once
    kinds = [type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    assert kinds == [PackedLinear, PackedLinear, torch.nn.Linear]  # the small one gains nothing from packing
    assert torch.allclose(model(x), want, atol=1e-4)


def test_only_what_onednn_packs_here():
    assert can_pack(torch.float32, torch.device("cpu"))
    assert not can_pack(torch.float16, torch.device("cpu"))
    assert not can_pack(torch.float32, torch.device("meta"))
