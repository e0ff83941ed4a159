"""The paper's Section 3 as properties of DropoutLSTM."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tasks.nn import backbone
from tasks.nn.backbone import (
    DropoutLSTM,
    cpu_lstm_supports,
    fused_to_stacked_state_dict,
    init_uniform_,
    stacked_to_fused_state_dict,
)

T, B, I, H, L = 7, 3, 5, 6, 3


def pair(p: float) -> tuple[DropoutLSTM, DropoutLSTM]:
    """A stacked and a fused backbone holding the same weights."""
    torch.manual_seed(0)
    stacked = DropoutLSTM(I, H, L, p, impl="stacked")
    init_uniform_(stacked, 0.3)
    fused = DropoutLSTM(I, H, L, p, impl="fused")
    fused.load_state_dict(stacked_to_fused_state_dict(stacked.state_dict()))
    return stacked, fused


def test_state_dict_layouts_round_trip():
    stacked, fused = pair(0.5)
    back = fused_to_stacked_state_dict(fused.state_dict())
    assert set(back) == set(stacked.state_dict())
    for k, v in stacked.state_dict().items():
        assert torch.equal(back[k], v)


@pytest.mark.parametrize("impl", ["stacked", "fused"])
def test_p0_equals_plain_lstm(impl):
    stacked, fused = pair(0.0)
    model = stacked if impl == "stacked" else fused
    plain = nn.LSTM(I, H, L)
    plain.load_state_dict({k.split(".", 1)[1]: v for k, v in stacked_to_fused_state_dict(stacked.state_dict()).items()})
    model.train()  # p=0 must be exact even in train mode
    x = torch.randn(T, B, I)
    h0 = (torch.randn(L, B, H), torch.randn(L, B, H))
    y, (h, c) = model(x, h0)
    y_ref, (h_ref, c_ref) = plain(x, h0)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)


def test_eval_mode_stacked_equals_fused():
    stacked, fused = pair(0.65)
    stacked.eval(), fused.eval()
    x = torch.randn(T, B, I)
    y_s, (h_s, c_s) = stacked(x)
    y_f, (h_f, c_f) = fused(x)
    torch.testing.assert_close(y_s, y_f)
    torch.testing.assert_close(h_s, h_f)
    torch.testing.assert_close(c_s, c_f)


def test_train_mode_dropout_on_the_l_plus_1_connections_only():
    """Capture what each single-layer LSTM received and returned in train mode; recomputing each
    layer with no dropout at all from those inputs must give the same outputs and states. So the
    only randomness is on layer inputs and the final output; the h->h recursion is untouched."""
    stacked, _ = pair(0.5)
    stacked.train()
    seen = []
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.append((args, out))) for layer in stacked.layers]
    drops = []
    hooks.append(stacked.drop.register_forward_hook(lambda m, args, out: drops.append(out)))
    x = torch.ones(T, B, I)
    y, (h, c) = stacked(x)
    for hook in hooks:
        hook.remove()
    assert len(drops) == L + 1  # input of every layer + output of the last
    for (args, (out, (h_i, c_i))), layer in zip(seen, stacked.layers):
        plain = nn.LSTM(layer.input_size, H)
        plain.load_state_dict(layer.state_dict())
        ref_out, (ref_h, ref_c) = plain(args[0])
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(h_i, ref_h)
        torch.testing.assert_close(c_i, ref_c)
    # The returned state is the top layer's last *un-dropped* output, not the masked y.
    torch.testing.assert_close(h[-1], seen[-1][1][0][-1])
    assert (y == 0).any() and not (h == 0).any()


@pytest.mark.parametrize("impl", ["stacked", "fused"])
def test_recurrent_state_is_never_masked(impl):
    """With p=0.9 most outputs are zeroed, but no unit of the carried state ever is, and the top
    layer's final h equals its un-dropped output (y / (1 - p) where y is kept)."""
    torch.manual_seed(1)
    model = DropoutLSTM(I, H, 2, 0.9, impl=impl).train()
    init_uniform_(model, 0.5)
    y, (h, c) = model(torch.randn(T, 50, I))
    assert (y == 0).float().mean() > 0.8
    assert not (h == 0).any() and not (c == 0).any()
    kept = y[-1] != 0
    torch.testing.assert_close(y[-1][kept] * (1 - 0.9), h[-1][kept])


def test_fresh_mask_every_time_step_and_unit():
    stacked, _ = pair(0.5)
    stacked.train()
    inputs = []
    hook = stacked.layers[0].register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    stacked(torch.ones(50, B, I))  # the same input at every step
    hook.remove()
    mask = inputs[0] != 0  # (T, B, I)
    assert 0.3 < mask.float().mean() < 0.7
    distinct_steps = {tuple(mask[t].flatten().tolist()) for t in range(50)}
    assert len(distinct_steps) > 40  # masks differ across time steps ...
    assert not (mask == mask[:, :, :1]).all()  # ... and across units


@pytest.mark.parametrize("impl", ["stacked", "fused"])
def test_packed_sequences(impl):
    stacked, fused = pair(0.0)
    model = (stacked if impl == "stacked" else fused).eval()
    x = torch.randn(T, B, I)
    lengths = torch.tensor([7, 4, 2])
    y_packed, (h, _) = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    y, _ = pad_packed_sequence(y_packed)
    for b, n in enumerate(lengths):
        y_ref, (h_ref, _) = model(x[:n, b : b + 1])
        torch.testing.assert_close(y[:n, b], y_ref[:, 0])
        torch.testing.assert_close(h[:, b], h_ref[:, 0])


@pytest.mark.parametrize("impl", ["stacked", "fused"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel", ["as probed", "missing"])
def test_cpu_autocast_runs_and_matches_fp32(impl, dtype, kernel, monkeypatch):
    """Where oneDNN lacks a reduced-precision LSTM kernel (fp16 on most CPUs, bf16 on CPUs without
    AVX512-BF16), the backbone runs the LSTM in fp32 instead of crashing; where it has one, the LSTM
    runs in `dtype`. Each case checks which of the two paths ran, so that neither passes for the other."""
    if kernel == "missing":
        monkeypatch.setattr(backbone, "cpu_lstm_supports", lambda dtype: False)
    native = backbone.cpu_lstm_supports(dtype)
    stacked, fused = pair(0.0)
    model = stacked if impl == "stacked" else fused
    ran_in: list[torch.dtype] = []
    for lstm in (m for m in model.modules() if isinstance(m, nn.LSTM)):
        lstm.register_forward_hook(lambda mod, args, out: ran_in.append(out[0].dtype))
    x = torch.randn(T, B, I, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y, _ = model(x)
    y.float().sum().backward()
    assert ran_in and set(ran_in) == {dtype if native else torch.float32}, (kernel, native)
    y_ref, _ = model(x)
    torch.testing.assert_close(y.float(), y_ref, atol=0.05, rtol=0.05)
    assert torch.isfinite(x.grad).all()


def test_kernel_probe_is_not_fooled_by_inference_mode():
    cpu_lstm_supports.cache_clear()
    with torch.inference_mode():
        inside = cpu_lstm_supports(torch.bfloat16)
    cpu_lstm_supports.cache_clear()
    assert inside == cpu_lstm_supports(torch.bfloat16)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dropout"):
        DropoutLSTM(I, H, L, 1.0)
    with pytest.raises(ValueError, match="impl"):
        DropoutLSTM(I, H, L, 0.1, impl="cudnn")


@pytest.mark.parametrize("impl", ["stacked", "fused"])
@pytest.mark.parametrize("reg", [None, {"locked": 0.4}])
def test_output_dropout_moved_to_the_caller_is_the_same_connection(impl, reg):
    """`output_dropout=False` hands back the last layer's output undropped; `drop_output` then
    draws the mask `forward` would have drawn there (same RNG order), so a caller that puts a layer
    in between (the translator's attention) drops the same connection, only later."""
    torch.manual_seed(0)
    inside = DropoutLSTM(I, H, L, 0.5, impl=impl, regularization=reg)
    outside = DropoutLSTM(I, H, L, 0.5, impl=impl, regularization=reg, output_dropout=False)
    outside.load_state_dict(inside.state_dict())
    x = torch.randn(T, B, I)
    torch.manual_seed(1)
    y_inside, state_inside = inside(x)
    torch.manual_seed(1)
    y_clean, state_outside = outside(x)
    assert (y_clean != 0).all()  # the top layer's output reaches the caller whole
    torch.testing.assert_close(outside.drop_output(y_clean), y_inside, rtol=0, atol=0)
    torch.testing.assert_close(state_outside, state_inside, rtol=0, atol=0)
    outside.eval()
    torch.testing.assert_close(outside.drop_output(y_clean), y_clean)  # evaluation: nothing dropped


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.65])
def test_cpu_masks_drawn_sooner_are_torchs_own_bit_for_bit(dtype, p, layout):
    """tasks/nn/masks.py draws a mask as `rand < 1 - p` instead of `bernoulli_(1 - p)`: the same
    outputs and gradients, and the generator left where torch's dropout leaves it, so every seed
    gives the numbers it gave before."""
    from tasks.nn import masks

    assert masks._uniform_is_bernoulli()  # else it falls back to torch's own, and this test proves nothing
    x = torch.randn(7, 5, 333, dtype=dtype, requires_grad=True)
    # The mask follows x's memory order, as ATen's empty_like(x) does.
    view = {"contiguous": lambda t: t, "transposed": lambda t: t.transpose(0, 2),
            "expanded": lambda t: t[:1].expand(4, 5, 333)}[layout]
    out = []
    for fn in (torch.nn.functional.dropout, masks.dropout):
        torch.manual_seed(11)
        y = fn(view(x), p, True)
        (grad,) = torch.autograd.grad((y * torch.arange(y.numel(), dtype=dtype).view_as(y)).sum(), x)
        out.append((y.detach(), grad, torch.rand(4)))
    for a, b in zip(*out):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    want = x.new_empty((4, 2, 9)).bernoulli_(1 - p).div_(1 - p)
    torch.manual_seed(3)
    assert torch.equal(masks.keep_mask((4, 2, 9), 1 - p, like=x), want)
    assert torch.equal(masks.dropout(x, p, training=False), x) and torch.equal(masks.dropout(x, 0.0), x)


def test_the_backbone_with_its_own_dropout_is_the_backbone_with_torchs():
    lstm = DropoutLSTM(6, 8, 2, dropout=0.5, impl="fused").train()
    x = torch.randn(4, 3, 6)
    runs = []
    for drop in (lstm.drop, torch.nn.Dropout(0.5)):
        lstm.drop = drop
        torch.manual_seed(5)
        y, _ = lstm(x)
        runs.append(y)
    assert torch.equal(*runs)


def test_the_kernel_probe_draws_nothing_from_the_runs_generator():
    """It runs once per process, from inside whichever run first autocasts: drawing from the global
    generator there would give that run other dropout masks than the same seed in a later run."""
    cpu_lstm_supports.cache_clear()
    torch.manual_seed(0)
    cpu_lstm_supports(torch.bfloat16)
    after_probe = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_probe, torch.rand(3))
