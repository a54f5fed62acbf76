"""The LoRA variants (lora_variants.py, docs/lora-variants.md): targets, rsLoRA, DoRA, Gaussian init, LoRA+.

Each variant's forward against its formula written out here, and against peft's own layers on the same weights;
merged against unmerged; checkpoints, resume and beam search with the flags; the paper's defaults unchanged."""

import json
import math

import pytest
import torch
from conftest import run_script, tiny_config
from hf_oracle import hub_twin, randomize

from loranlg import flags
from loranlg.checkpoint import gather, load_weights, save_lora
from loranlg.errors import InputError
from loranlg.lora import LoRAQKV, count_trainable, lora_layers, merge_lora, named_lora_layers, unmerge_lora
from loranlg.lora_variants import (DoRAConv1D, DoRAQKV, LoRAConv1D, lora_settings, peft_config)
from loranlg.model import Conv1D, GPT2LMModel, build_model, describe_trainable
from loranlg.optim import parameter_groups

D, R, ALPHA = 16, 3, 12.0
IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


def variant_model(seed=0, lora_dim=4, lora_alpha=32, **variant):
    """A tiny model with `variant` (build_model's arguments), every weight random and sizeable, LoRA's B and
    DoRA's magnitudes trained-looking (m near ||W0 + dW||_col, so that g is near 1 but not 1)."""
    torch.manual_seed(seed)
    model = randomize(build_model(tiny_config(), lora_dim, lora_alpha, **variant).eval(), seed=seed, scale=0.2)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(model):
            if hasattr(layer, "lora_magnitude"):
                norm = layer.column_norm()[layer.adapted_columns()]
                layer.lora_magnitude.copy_(norm * (1 + 0.2 * torch.randn(norm.shape, generator=generator)))
    return model


# ---------------------------------------------------------------- flags and counts

def test_target_names_parse():
    assert flags.parse_targets("v,q") == ("q", "v")
    assert flags.parse_targets(" q , k,v,o ") == ("q", "k", "v", "o")
    assert flags.parse_targets("all") == ("q", "k", "v", "o", "fc", "proj")
    for bad in ("", "q,x", "all,q", "qv"):
        with pytest.raises(ValueError):
            flags.parse_targets(bad)


def test_trainable_counts_on_gpt2_md():
    """393,216 for the paper's q,v at r=4 on gpt2.md (SPEC 4); the other targets and DoRA by their shapes."""
    d, layers, r = 1024, 24, 4
    per_layer = {"q": 2 * r * d, "k": 2 * r * d, "v": 2 * r * d, "o": 2 * r * d, "fc": r * d + r * 4 * d,
                 "proj": r * 4 * d + r * d}
    outputs = {"q": d, "k": d, "v": d, "o": d, "fc": 4 * d, "proj": d}
    for targets, dora in [("q,v", False), ("q,k,v,o", False), ("all", False), ("q,v", True), ("all", True)]:
        model = build_model("gpt2.md", r, 32, lora_targets=targets, dora=dora, device="meta")
        names = flags.parse_targets(targets)
        expected = layers * sum(per_layer[n] + (outputs[n] if dora else 0) for n in names)
        assert count_trainable(model) == expected, targets
    model = build_model("gpt2.md", 4, 32, device="meta")
    assert count_trainable(model) == 393_216
    assert describe_trainable(model) == "trainable parameters: 393,216 (LoRA r=4 on q,v)"
    model = build_model("gpt2.md", 4, 32, lora_targets="q,k,v,o", lora_scaling="rs", dora=True, device="meta")
    assert describe_trainable(model).endswith("(LoRA r=4 on q,k,v,o, rsLoRA, DoRA)")


def test_the_defaults_build_todays_model_bit_for_bit():
    """The default flags give the paper's layers (LoRAQKV on q,v, plain Conv1D elsewhere, scaling alpha/r,
    kaiming A drawn at the same point of the generator) and exactly the model of the old call."""
    torch.manual_seed(7)
    old = build_model(tiny_config(), 4, 32, lora_slices="qv")
    torch.manual_seed(7)
    new = build_model(tiny_config(), 4, 32, lora_targets="q,v", lora_scaling="alpha_over_r", dora=False,
                      lora_init="kaiming")
    for block in new.transformer.h:
        assert type(block.attn.c_attn) is LoRAQKV and block.attn.c_attn.scaling == 32 / 4
        assert type(block.attn.c_proj) is Conv1D and type(block.mlp.c_fc) is Conv1D
        assert type(block.mlp.c_proj) is Conv1D
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(old_state) == list(new_state)
    for key in old_state:
        assert torch.equal(old_state[key], new_state[key]), key
    with torch.no_grad():
        for p in new.parameters():
            if p.requires_grad:
                p.add_(0.1)
        for p in old.parameters():
            if p.requires_grad:
                p.add_(0.1)
        assert torch.equal(new(IDS), old(IDS))


# ---------------------------------------------------------------- each variant against its formula

def randomized(layer):
    """Weights, bias and B drawn N(0, 1) (a trained-looking update); DoRA's magnitudes away from their start."""
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
        layer.lora_B.normal_()
        if hasattr(layer, "lora_magnitude"):
            layer.lora_magnitude.mul_(1 + 0.3 * torch.rand(layer.lora_magnitude.shape))
    return layer


def random_conv(kind=LoRAConv1D, dropout=0.0, scaling="alpha_over_r", n_in=D, n_out=2 * D, seed=0):
    torch.manual_seed(seed)
    return randomized(kind(n_in, n_out, R, ALPHA, dropout, scaling))


def random_qkv(kind=LoRAQKV, slices=(True, False, True), dropout=0.0, scaling="alpha_over_r", seed=0):
    torch.manual_seed(seed)
    return randomized(kind(D, R, ALPHA, dropout, slices, scaling))


@pytest.mark.parametrize("scaling", ["alpha_over_r", "rs"])
def test_lora_on_a_whole_conv1d_is_its_formula(scaling):
    """h = x W0 + b + s x A^T B^T, s = alpha/r or alpha/sqrt(r) (rsLoRA), A [r, in], B [out, r]."""
    layer = random_conv(scaling=scaling).eval()
    s = ALPHA / R if scaling == "alpha_over_r" else ALPHA / math.sqrt(R)
    assert layer.scaling == s and layer.lora_A.shape == (R, D) and layer.lora_B.shape == (2 * D, R)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        by_hand = x @ layer.weight + layer.bias + s * (x @ layer.lora_A.T @ layer.lora_B.T)
        torch.testing.assert_close(layer(x), by_hand)
        torch.testing.assert_close(layer.formula(x), by_hand)


def test_rslora_on_c_attn_is_the_same_layer_with_alpha_over_sqrt_r():
    rs, plain = random_qkv(scaling="rs").eval(), random_qkv().eval()
    assert rs.scaling == ALPHA / math.sqrt(R) and plain.scaling == ALPHA / R
    x = torch.randn(3, D)
    with torch.no_grad():
        base = x @ rs.weight + rs.bias
        torch.testing.assert_close(rs(x) - base, (plain(x) - base) * math.sqrt(R))


def dora_by_hand(weight, bias, delta, magnitude, columns, x):
    """DoRA (Liu et al. 2024, eq. 5): x m (W0 + dW) / ||W0 + dW||_c + b, the norm of each output column over
    the inputs (weight [in, out]); columns outside `columns` keep W0."""
    full = weight + delta
    merged = weight.clone()
    merged[:, columns] = magnitude * full[:, columns] / full[:, columns].norm(dim=0)
    return x @ merged + bias


def test_dora_on_a_conv1d_is_its_formula():
    layer = random_conv(DoRAConv1D).eval()
    x = torch.randn(2, 5, D)
    delta = layer.scaling * (layer.lora_B @ layer.lora_A).T
    with torch.no_grad():
        by_hand = dora_by_hand(layer.weight, layer.bias, delta, layer.lora_magnitude, slice(None), x)
        torch.testing.assert_close(layer(x), by_hand)
        torch.testing.assert_close(layer.formula(x), by_hand)
        torch.testing.assert_close(x @ layer.merged_weight() + layer.bias, by_hand)


@pytest.mark.parametrize("slices", [(True, False, True), (True, True, True), (False, True, False)])
def test_dora_on_c_attn_slices_is_its_formula(slices):
    layer = random_qkv(DoRAQKV, slices).eval()
    enabled = [i for i, on in enumerate(slices) if on]
    assert layer.lora_magnitude.shape == (len(enabled) * D,)
    columns = torch.cat([torch.arange(i * D, (i + 1) * D) for i in enabled])
    delta = torch.zeros(D, 3 * D)
    for s, i in enumerate(enabled):
        a_s, b_s = layer.lora_A[s * R:(s + 1) * R], layer.lora_B[s * D:(s + 1) * D]
        delta[:, i * D:(i + 1) * D] = layer.scaling * (b_s @ a_s).T
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        out = layer(x)
        by_hand = dora_by_hand(layer.weight, layer.bias, delta, layer.lora_magnitude, columns, x)
        torch.testing.assert_close(out, by_hand)
        plain = x @ layer.weight + layer.bias
        for i in set(range(3)) - set(enabled):  # a slice left alone is exactly W0's
            assert torch.equal(out[..., i * D:(i + 1) * D], plain[..., i * D:(i + 1) * D])


def test_dora_starts_at_the_pretrained_layer_and_its_norm_takes_no_gradient():
    torch.manual_seed(0)
    layer = DoRAConv1D(D, 2 * D, R, ALPHA)
    x = torch.randn(4, D)
    torch.testing.assert_close(layer.lora_magnitude.detach(), layer.weight.detach().norm(dim=0))
    torch.testing.assert_close(layer(x), x @ layer.weight + layer.bias)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer(x).square().sum().backward()
    # d/dB with the norm held constant (DoRA 4.3, peft): g x A^T, g = m / ||W0 + dW|| fixed
    g = (layer.lora_magnitude / (layer.weight + layer.delta_weight()).norm(dim=0)).detach()
    out = x @ layer.weight + layer.scaling * (x @ layer.lora_A.T @ layer.lora_B.T)
    upstream = 2 * (g * out + layer.bias)
    expected = layer.scaling * ((upstream * g).T @ (x @ layer.lora_A.T))
    torch.testing.assert_close(layer.lora_B.grad, expected.detach())


def test_gaussian_init_draws_a_with_std_one_over_r():
    torch.manual_seed(0)
    layer = LoRAConv1D(512, 512, 8, 16, init="gaussian")
    assert abs(layer.lora_A.std().item() - 1 / 8) < 0.01 and abs(layer.lora_A.mean().item()) < 0.01
    assert torch.count_nonzero(layer.lora_B) == 0
    qkv = LoRAQKV(512, 8, 16, init="gaussian")
    assert abs(qkv.lora_A.std().item() - 1 / 8) < 0.01 and torch.count_nonzero(qkv.lora_B) == 0
    kaiming = LoRAConv1D(512, 512, 8, 16)
    assert kaiming.lora_A.abs().max() <= 1 / math.sqrt(512)


# ---------------------------------------------------------------- against peft

def peft_layer(ours, dropout=0.0, dora=False, rs=False):
    """peft's lora.Linear on a transformers Conv1D holding our weights, loaded from peft_tensors()."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D as HubConv1D

    tensors = ours.peft_tensors()
    rank = tensors["lora_A"].shape[0]
    holder = torch.nn.Module()
    holder.layer = base = HubConv1D(ours.weight.shape[1], ours.weight.shape[0])
    alpha = tensors["scaling"] * (math.sqrt(rank) if rs else rank)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, fan_in_fan_out=True, use_rslora=rs,
                        use_dora=dora, target_modules=["layer"])
    layer = get_peft_model(holder, config).base_model.model.layer.to(ours.weight.dtype)
    with torch.no_grad():
        base.weight.copy_(ours.unmerged_weight())
        base.bias.copy_(ours.bias)
        layer.lora_A["default"].weight.copy_(tensors["lora_A"])
        layer.lora_B["default"].weight.copy_(tensors["lora_B"])
        if dora:
            layer.lora_magnitude_vector["default"].weight.copy_(tensors["magnitude"])
    assert layer.scaling["default"] == pytest.approx(tensors["scaling"])
    return layer


@pytest.mark.parametrize("kind,dora", [("conv", False), ("conv", True), ("qkv", False), ("qkv", True)])
@pytest.mark.parametrize("rs", [False, True])
def test_each_layer_equals_peft_on_the_same_weights(kind, dora, rs):
    scaling = "rs" if rs else "alpha_over_r"
    if kind == "conv":
        ours = random_conv(DoRAConv1D if dora else LoRAConv1D, scaling=scaling).double()
    else:
        ours = random_qkv(DoRAQKV if dora else LoRAQKV, (True, True, False), scaling=scaling).double()
    theirs = peft_layer(ours, dora=dora, rs=rs)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-10, atol=1e-10)
        theirs.merge()
        torch.testing.assert_close(theirs.base_layer.weight, ours.merged_weight(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dora", [False, True])
def test_training_forward_and_gradients_equal_peft_with_dropout(dora):
    """In training with LoRA dropout (one mask, drawn at the same point), output and gradients of A, B, m."""
    ours = random_conv(DoRAConv1D if dora else LoRAConv1D, dropout=0.3).double().train()
    theirs = peft_layer(ours, dropout=0.3, dora=dora).train()
    x = torch.randn(4, 6, D, dtype=torch.float64)
    torch.manual_seed(5)
    out = ours(x)
    torch.manual_seed(5)
    ref = theirs(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    ours_params = [ours.lora_A, ours.lora_B] + ([ours.lora_magnitude] if dora else [])
    theirs_params = [theirs.lora_A["default"].weight, theirs.lora_B["default"].weight]
    theirs_params += [theirs.lora_magnitude_vector["default"].weight] if dora else []
    for a, b in zip(torch.autograd.grad(out.square().sum(), ours_params),
                    torch.autograd.grad(ref.square().sum(), theirs_params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def peft_twin(model):
    """transformers' GPT-2 with our base weights, wrapped by peft with peft_config(), our adapters loaded."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    twin = get_peft_model(hub_twin(model), LoraConfig(**peft_config(model.config)))
    for name, layer in named_lora_layers(model).items():
        module = twin.base_model.model.get_submodule(name)
        tensors = layer.peft_tensors()
        assert module.scaling["default"] == pytest.approx(tensors["scaling"]), name
        with torch.no_grad():
            module.lora_A["default"].weight.copy_(tensors["lora_A"])
            module.lora_B["default"].weight.copy_(tensors["lora_B"])
            if tensors["magnitude"] is not None:
                module.lora_magnitude_vector["default"].weight.copy_(tensors["magnitude"])
    return twin.eval()


VARIANTS = [dict(lora_targets="q,v"), dict(lora_targets="v"), dict(lora_targets="q,k,v,o"),
            dict(lora_targets="all"), dict(lora_targets="o,proj", lora_scaling="rs"),
            dict(lora_targets="q,v", lora_scaling="rs"), dict(lora_targets="q,v", dora=True),
            dict(lora_targets="all", dora=True, lora_scaling="rs"), dict(lora_targets="k,fc", dora=True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_the_whole_model_equals_peft_with_peft_config(variant):
    """peft_config() + each layer's peft_tensors() express the adapter exactly: targets, ranks (n*r on
    c_attn), scaling (rsLoRA through use_rslora), DoRA."""
    model = variant_model(**variant)
    twin = peft_twin(model)
    assert peft_config(model.config)["use_dora"] == variant.get("dora", False)
    with torch.no_grad():
        ours, theirs = model(IDS), twin(input_ids=IDS).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-4)
    assert (ours - hub_twin(model)(input_ids=IDS).logits).abs().max() > 1e-2  # the adapters matter


# ---------------------------------------------------------------- merging, checkpoints

@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_merged_equals_unmerged_and_unmerge_restores(variant):
    model = variant_model(**variant)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(IDS)
        exported = gather(model, merged=True)
        merge_lora(model)
        merge_lora(model)  # twice is once
        merged = model(IDS)
        assert all(torch.equal(v, gather(model, merged=True)[k]) for k, v in exported.items())
        for key, value in gather(model, merged=False).items():  # a merged model saves its unmerged weights
            torch.testing.assert_close(value, before["transformer." + key], rtol=1e-5, atol=1e-5)
        for layer in lora_layers(model):  # beam search runs the plain product
            x = torch.randn(3, layer.weight.shape[0])
            assert layer.merged and torch.equal(layer(x), layer.frozen(x))
        unmerge_lora(model)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [dict(lora_targets="q,k,v,o"), dict(lora_targets="all", dora=True),
                                     dict(lora_targets="q,v", lora_scaling="rs")])
def test_lora_file_round_trip_and_its_recorded_settings(tmp_path, variant):
    model = variant_model(**variant)
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" not in k}, tmp_path / "base.pt")
    save_lora(model, tmp_path / "lora.pt")
    saved = torch.load(tmp_path / "lora.pt", weights_only=True)
    recorded = saved["loranlg"]
    assert {key: recorded[key] for key in lora_settings(model.config)} == lora_settings(model.config)
    assert recorded["lora_targets"] == {"all": "q,k,v,o,fc,proj"}.get(variant["lora_targets"], variant["lora_targets"])
    fresh = build_model(tiny_config(), 4, 32, **variant).eval()
    load_weights(fresh, tmp_path / "base.pt", tmp_path / "lora.pt")
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))


@pytest.mark.parametrize("saved,loaded,words", [
    (dict(lora_targets="q,k,v,o"), dict(lora_targets="q,k,v"), "--lora_targets"),
    (dict(lora_targets="q,v"), dict(lora_targets="q,v,fc"), "--lora_targets"),
    (dict(lora_targets="q,v"), dict(lora_targets="q,k,v"), "--lora_targets"),
    (dict(lora_targets="q,v", dora=True), dict(lora_targets="q,v"), "--dora"),
    (dict(lora_targets="q,v"), dict(lora_targets="q,v", dora=True), "--dora"),
    (dict(lora_targets="q,v", lora_scaling="rs"), dict(lora_targets="q,v"), "--lora_scaling rs"),
])
def test_loading_with_other_flags_is_refused(tmp_path, saved, loaded, words):
    model = variant_model(**saved)
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" not in k}, tmp_path / "base.pt")
    save_lora(model, tmp_path / "lora.pt")
    with pytest.raises(InputError) as err:
        load_weights(build_model(tiny_config(), 4, 32, **loaded), tmp_path / "base.pt", tmp_path / "lora.pt")
    assert words in str(err.value)


def test_dora_magnitudes_start_from_the_loaded_base_weights(tmp_path):
    base = randomize(GPT2LMModel(tiny_config()), scale=0.2)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    model = build_model(tiny_config(), 4, 32, lora_targets="q,v,fc", dora=True)
    load_weights(model, tmp_path / "base.pt")
    with torch.no_grad():
        assert torch.allclose(model(IDS), base(IDS), atol=1e-5)  # training starts at the pretrained model
    layer = model.transformer.h[1].mlp.c_fc
    torch.testing.assert_close(layer.lora_magnitude.detach(), base.transformer.h[1].mlp.c_fc.weight.norm(dim=0))


# ---------------------------------------------------------------- LoRA+

def test_lora_plus_puts_b_and_magnitudes_at_k_times_the_rate():
    model = build_model(tiny_config(), 4, 32, lora_targets="q,v,o", dora=True)
    groups = parameter_groups(model, lora_plus_ratio=16, lr=2e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    slow, fast = groups
    assert "lr" not in slow and fast["lr"] == pytest.approx(16 * 2e-4)
    assert all(names[id(p)].endswith("lora_A") for p in slow["params"])
    assert all(names[id(p)].endswith(("lora_B", "lora_magnitude")) for p in fast["params"])
    assert len(slow["params"]) + len(fast["params"]) == sum(p.requires_grad for p in model.parameters())
    plain = parameter_groups(model)  # K = 1: the recipe's one group, as before
    assert len(plain) == 1 and "lr" not in plain[0] and len(plain[0]["params"]) == len(groups[0]["params"]) * 3
    decay = parameter_groups(model, no_decay_bias=True, lora_plus_ratio=4, lr=1.0)
    assert [g.get("lr") for g in decay] == [None, 4.0]


# ---------------------------------------------------------------- the commands

@pytest.fixture(scope="module")
def e2e_examples(shared_dir, vocab_dir):
    from conftest import encoded_e2e_sample
    return encoded_e2e_sample(shared_dir, vocab_dir, stride=500, count=7)


VARIANT_FLAGS = ["--lora_targets", "q,k,v,o", "--lora_scaling", "rs", "--dora", "--lora_init", "gaussian",
                 "--lora_plus_ratio", "4"]


def test_training_and_resume_with_every_variant_flag(tmp_path, e2e_examples, capsys):
    """gpt2_ft.py with the variant flags: the count printed, the settings recorded, resume exact, and a resume
    with other flags refused."""
    from gpt2_ft import main
    from test_train import write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", e2e_examples)
    common = ["--train_data", data, "--valid_data", data, "--model_card", "gpt2.tiny", "--lora_dim", 4,
              "--lora_alpha", 32, "--lora_dropout", 0.2, "--train_batch_size", 2, "--max_step", 6, "--lr", 5e-3,
              "--log_interval", 1, "--save_interval", 3, "--eval_interval", 100, "--device", "cpu", *VARIANT_FLAGS]
    common = [str(a) for a in common]
    main(common + ["--work_dir", str(tmp_path / "whole")])
    out = capsys.readouterr().out
    d = 64  # gpt2.tiny: (3 slices + o) x (2 r d) + DoRA's 4 d magnitudes, times 2 layers
    assert f"trainable parameters: {2 * (4 * 2 * 4 * d + 4 * d):,} (LoRA r=4 on q,k,v,o, rsLoRA, DoRA, gaussian " \
           "init)" in out
    main(common + ["--work_dir", str(tmp_path / "parts")], stop_after_step=4)
    main(common + ["--work_dir", str(tmp_path / "parts"), "--resume"])
    whole = torch.load(tmp_path / "whole" / "model.6.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "model.6.pt", weights_only=True)
    assert whole["loranlg"]["lora_targets"] == "q,k,v,o" and whole["loranlg"]["dora"] is True
    assert any(k.endswith("attn.c_proj.lora_magnitude") for k in whole["model_state_dict"])
    for key, value in whole["model_state_dict"].items():
        assert torch.equal(value, parts["model_state_dict"][key]), key
    with pytest.raises(InputError, match="lora_plus_ratio"):
        main(common[:-2] + ["--lora_plus_ratio", "2", "--work_dir", str(tmp_path / "parts"), "--resume",
                            "--max_step", "8"])


def test_beam_search_decodes_a_variant_checkpoint_merged(tmp_path):
    """gpt2_beam.py with the flags decodes like the unmerged model; without them it refuses the file."""
    from test_beam import BEAM_FLAGS, reference_beam, write_jsonl as write_records

    from loranlg.beam import BeamSettings

    torch.manual_seed(4)
    variant = dict(lora_targets="q,v,fc", dora=True, lora_scaling="rs")
    model = build_model("gpt2.tiny", lora_dim=2, lora_alpha=8, **variant).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(20.0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" not in k}, tmp_path / "base.pt")
    save_lora(model, tmp_path / "lora.pt")
    gen = torch.Generator().manual_seed(6)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() + [50256] for n in (4, 9)]
    data = tmp_path / "test.jsonl"
    write_records(data, [{"context": c} for c in contexts])
    weights = ["--init_checkpoint", tmp_path / "base.pt", "--lora_checkpoint", tmp_path / "lora.pt", "--lora_dim",
               2, "--lora_alpha", 8, "--work_dir", tmp_path, "--device", "cpu", *BEAM_FLAGS]
    done = run_script("gpt2_beam.py", "--data", data, *weights, "--lora_targets", "q,v,fc", "--dora",
                      "--lora_scaling", "rs")
    assert done.returncode == 0, done.stderr[-3000:]
    got = [json.loads(line)["predict"] for line in (tmp_path / "beam_prediction.jsonl").read_text().splitlines()]
    s = BeamSettings(beam=3, eval_len=6, length_penalty=0.8, no_repeat_ngram_size=2, eos_ids=(50256, 628))
    assert got == [reference_beam(model, c, s) for c in contexts]
    done = run_script("gpt2_beam.py", "--data", data, *weights)
    assert done.returncode == 2 and "--lora_targets" in done.stderr
