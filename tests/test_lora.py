"""LoRA on c_attn (SPEC 4): the formula written out by hand, B = 0 start, merge, slices, dropout, counts."""

import math

import pytest
import torch
from conftest import tiny_config
from hf_oracle import randomize

from loranlg.lora import (LoRAQKV, count_trainable, lora_state_dict, mark_only_lora_trainable, merge_lora,
                          parse_slices, unmerge_lora)
from loranlg.model import GPT2LMModel, build_model, describe_trainable

D, R, ALPHA = 16, 3, 12.0


def random_layer(slices=(True, False, True), dropout=0.0, seed=0):
    torch.manual_seed(seed)
    layer = LoRAQKV(D, R, ALPHA, dropout, slices)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
        layer.lora_B.normal_()  # trained B: the update is no longer zero
    return layer


def by_hand(layer, x, x_for_lora=None):
    """SPEC 4: base x W + b on [q | k | v]; each enabled slice s gets scaling * x A_s^T B_s^T, where A_s is
    rows s*r.. of lora_A and B_s rows s*d.. of lora_B; a disabled slice is left as it was."""
    x_for_lora = x if x_for_lora is None else x_for_lora
    out = x @ layer.weight + layer.bias
    scaling = ALPHA / R
    enabled = [i for i, on in enumerate(layer.slices) if on]
    for s, i in enumerate(enabled):
        a_s = layer.lora_A[s * R:(s + 1) * R]          # [r, d]
        b_s = layer.lora_B[s * D:(s + 1) * D]          # [d, r]
        out[..., i * D:(i + 1) * D] += scaling * (x_for_lora @ a_s.T @ b_s.T)
    return out


@pytest.mark.parametrize("slices", [(True, False, True), (True, True, True), (False, True, False)])
def test_output_equals_the_formula(slices):
    layer = random_layer(slices).eval()
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        assert torch.allclose(layer(x), by_hand(layer, x), atol=1e-5)
    assert layer.lora_A.shape == (R * sum(slices), D) and layer.lora_B.shape == (D * sum(slices), R)


@pytest.mark.parametrize("slices", [(True, False, True), (True, True, True), (False, True, False)])
def test_fused_form_equals_the_formula(slices):
    """forward's one addmm (fused) against the layer's reference path (formula), in float64 to the last
    bits, with the same dropout mask (the same generator state), and in their gradients."""
    layer = random_layer(slices, dropout=0.3).double().train()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    torch.manual_seed(1)
    fused = layer(x)
    fused_grads = torch.autograd.grad(fused.square().sum(), [layer.lora_A, layer.lora_B])
    torch.manual_seed(1)
    formula = layer.formula(x)
    formula_grads = torch.autograd.grad(formula.square().sum(), [layer.lora_A, layer.lora_B])
    torch.testing.assert_close(fused, formula, rtol=1e-12, atol=1e-12)
    for a, b in zip(fused_grads, formula_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer.formula(x), by_hand(layer, x), rtol=1e-12, atol=1e-12)


def test_default_layout_matches_the_spec():
    layer = LoRAQKV(D, R, ALPHA)
    assert layer.slices == (True, False, True)
    assert layer.lora_A.shape == (2 * R, D) and layer.lora_B.shape == (2 * D, R)
    assert layer.weight.shape == (D, 3 * D)  # the hub's [in, out]
    assert torch.count_nonzero(layer.lora_B) == 0


def test_init_is_kaiming_uniform_with_a_sqrt5():
    layer = LoRAQKV(256, 8, 16)
    bound = 1 / math.sqrt(256)  # kaiming_uniform_(a=sqrt(5)) on fan_in d gives U(-1/sqrt(d), 1/sqrt(d))
    a = layer.lora_A.detach()
    assert a.abs().max() <= bound and a.abs().max() > 0.95 * bound
    assert abs(a.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # the std of that uniform


def test_b_zero_gives_the_base_model_exactly():
    torch.manual_seed(0)
    base = randomize(GPT2LMModel(tiny_config()).eval())
    adapted = GPT2LMModel(tiny_config(lora_dim=4, lora_alpha=32)).eval()
    missing = adapted.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all("lora_" in k for k in missing)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():  # B = 0 adds an exact zero, but through other kernels: equal to float32 rounding
        torch.testing.assert_close(adapted(ids), base(ids), rtol=1e-6, atol=1e-6)


def test_merged_equals_unmerged_and_unmerge_restores_the_weights():
    torch.manual_seed(0)
    model = randomize(GPT2LMModel(tiny_config(lora_dim=4, lora_alpha=32)).eval(), scale=0.2)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(ids)
        merge_lora(model)
        merge_lora(model)  # twice is once
        assert not torch.allclose(model.transformer.h[0].attn.c_attn.weight,
                                  weights["transformer.h.0.attn.c_attn.weight"])
        merged = model(ids)
        unmerge_lora(model)
    assert (merged - unmerged).abs().max() < 1e-4
    for key, value in model.state_dict().items():
        assert torch.allclose(value, weights[key], atol=1e-6), key


def test_merge_changes_only_the_q_and_v_columns():
    layer = random_layer()
    before = layer.weight.detach().clone()
    layer.merge()
    changed = (layer.weight.detach() != before).any(dim=0)  # per output column
    assert changed[:D].all() and not changed[D:2 * D].any() and changed[2 * D:].all()


def test_q_and_v_change_and_k_does_not():
    layer = random_layer().eval()
    x = torch.randn(3, D)
    with torch.no_grad():
        base = x @ layer.weight + layer.bias
        out = layer(x)
    q, k, v = (out - base).split(D, dim=-1)
    assert q.abs().min() > 0 and v.abs().min() > 0
    # k gets no LoRA term; it is computed by another matmul than `base` (blocking, vector width and so the
    # rounding change with the CPU: 9.5e-7 seen on one), so equal up to float32 rounding, far below q's and v's change
    torch.testing.assert_close(out[:, D:2 * D], base[:, D:2 * D], rtol=1e-6, atol=1e-5)
    assert k.abs().max() < 1e-3 * min(q.abs().mean(), v.abs().mean())


def test_dropout_applies_to_the_input_of_a_only():
    layer = random_layer(dropout=0.5).train()
    seen = {}

    def record(module, inputs, output):
        seen["in"], seen["out"] = inputs[0], output

    layer.lora_dropout.register_forward_hook(record)
    x = torch.randn(4, 6, D)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(seen["in"], x)
    dropped = seen["out"] == 0
    assert 0.3 < dropped.float().mean() < 0.7  # p = 0.5 really drops
    assert torch.allclose(seen["out"][~dropped], 2 * x[~dropped])  # survivors scaled by 1/(1-p)
    # The base projection (k entirely) sees the whole x; only the LoRA path sees the dropped one.
    assert torch.allclose(out, by_hand(layer, x, x_for_lora=seen["out"]), atol=1e-5)
    layer.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), by_hand(layer, x), atol=1e-5)


def test_only_lora_is_trainable_and_gradients_reach_only_it():
    model = build_model(tiny_config(), lora_dim=2, lora_alpha=8)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"transformer.h.{i}.attn.c_attn.lora_{m}" for i in range(2) for m in "AB"}
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRAQKV):
                layer.lora_B.normal_()
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_lora_dim_zero_is_full_fine_tuning():
    model = build_model(tiny_config(), lora_dim=0)
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora_" in k for k in model.state_dict())
    mark_only_lora_trainable(model)
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())
    assert describe_trainable(model) == f"trainable parameters: {count_trainable(model):,} (full fine-tuning)"


@pytest.mark.parametrize("card, expected", [("gpt2.md", 393_216), ("gpt2.lg", 737_280)])
def test_trainable_count_of_the_paper(card, expected):
    with torch.device("meta"):  # no memory for 355M / 774M weights
        model = build_model(card, lora_dim=4, lora_alpha=32)
    n_embd, n_layer = {"gpt2.md": (1024, 24), "gpt2.lg": (1280, 36)}[card]
    assert expected == 2 * 2 * 4 * n_embd * n_layer  # SPEC 4's formula, and the number it states
    assert count_trainable(model) == expected
    assert describe_trainable(model) == f"trainable parameters: {expected:,} (LoRA r=4 on q,v)"


def test_lora_state_dict_holds_only_lora_tensors():
    model = build_model(tiny_config(), lora_dim=2)
    keys = set(lora_state_dict(model))
    assert keys == {f"transformer.h.{i}.attn.c_attn.lora_{m}" for i in range(2) for m in "AB"}


def test_slices_parse():
    assert parse_slices("qv") == (True, False, True)
    assert parse_slices("QKV") == (True, True, True)
    for bad in ("", "qx", "o"):
        with pytest.raises(ValueError):
            parse_slices(bad)
