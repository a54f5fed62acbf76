"""Every checkpoint format of SPEC 3-4 in and out, and each bad checkpoint's error."""

import argparse
import os

import pytest
import torch
from conftest import tiny_config
from hf_oracle import hub_logits, hub_twin, randomize
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from loranlg.checkpoint import export_merged, load_weights, save_full, save_lora
from loranlg.model import build_model
from loranlg.errors import InputError
from loranlg.lora import LoRAQKV

IDS = [5, 17, 3, 88, 41, 0, 9]
LORA = dict(lora_dim=2, lora_alpha=8)


def trained_base(seed=0):
    torch.manual_seed(seed)
    return randomize(build_model(tiny_config()).eval(), seed, scale=0.2)


def trained_lora(base, seed=1):
    """A LoRA model on `base` whose LoRA tensors are all non-zero (as after training)."""
    model = build_model(tiny_config(), **LORA).eval()
    model.load_state_dict(base.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRAQKV):
                layer.lora_A.copy_(0.3 * torch.randn(layer.lora_A.shape, generator=generator))
                layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=generator))
    return model


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def hub_legacy_state(model, prefix=""):
    """What the hub's pytorch_model.bin holds: bare keys, [in, out] weights, the constant mask buffers."""
    state = {}
    for key, value in model.state_dict().items():
        if "lora_" not in key:
            state[prefix + key[len("transformer."):]] = value.clone()
    n = model.config.n_positions
    for i in range(model.config.n_layer):
        state[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


def fresh(**lora):
    torch.manual_seed(123)  # different random weights than any saved model
    return build_model(tiny_config(), **lora).eval()


def assert_same_outputs(model, reference, atol=1e-5):
    assert torch.allclose(logits(model), logits(reference), atol=atol)


# ---------------------------------------------------------------- formats that load

def test_hub_legacy_bin_loads_and_equals_transformers(tmp_path):
    base = trained_base()
    torch.save(hub_legacy_state(base), tmp_path / "pytorch_model.bin")
    model = fresh()
    load_weights(model, tmp_path / "pytorch_model.bin")
    assert (logits(model) - hub_logits(hub_twin(base), IDS)).abs().max() < 1e-4
    assert torch.equal(logits(model), logits(base))


@pytest.mark.parametrize("prefix", ["transformer.", "module.transformer."])
def test_prefixed_keys_and_a_tied_head_load(tmp_path, prefix):
    base = trained_base()
    state = hub_legacy_state(base, prefix)
    state["lm_head.weight"] = base.transformer.wte.weight.detach().clone()
    torch.save(state, tmp_path / "prefixed.bin")
    model = fresh()
    load_weights(model, tmp_path / "prefixed.bin")
    assert torch.equal(logits(model), logits(base))


def test_legacy_pickle_format_loads(tmp_path):
    base = trained_base()
    torch.save(hub_legacy_state(base), tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    model = fresh()
    load_weights(model, tmp_path / "old.bin")
    assert torch.equal(logits(model), logits(base))


def test_hub_safetensors_written_by_transformers_loads(tmp_path):
    base = trained_base()
    twin = hub_twin(base)
    twin.save_pretrained(tmp_path / "hub")
    files = os.listdir(tmp_path / "hub")
    assert "model.safetensors" in files
    model = fresh()
    load_weights(model, tmp_path / "hub" / "model.safetensors")
    assert (logits(model) - hub_logits(twin, IDS)).abs().max() < 1e-4


def test_original_full_checkpoint_with_lora_loads_its_lora(tmp_path):
    """The original's last checkpoint: DDP prefixes, the lm_head alias of wte, mask buffers, LoRA tensors."""
    trained = trained_lora(trained_base())
    state = {"module." + k: v.clone() for k, v in trained.state_dict().items()}
    state["module.lm_head.decoder.weight"] = trained.transformer.wte.weight.detach().clone()
    for i in range(2):
        state[f"module.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
    torch.save({"model_state_dict": state}, tmp_path / "model.26290.pt")
    model = fresh(**LORA)
    load_weights(model, tmp_path / "model.26290.pt")
    assert torch.equal(logits(model), logits(trained))


def test_save_full_round_trip_in_the_original_layout(tmp_path):
    trained = trained_lora(trained_base())
    trained.transformer.h[1].attn.c_attn.merge()  # saved unmerged whatever the model's state
    save_full(trained, tmp_path / "full.pt")
    saved = torch.load(tmp_path / "full.pt", weights_only=True)["model_state_dict"]
    assert all(k.startswith("module.transformer.") for k in saved)
    assert "module.transformer.h.0.attn.c_attn.lora_B" in saved
    trained.transformer.h[1].attn.c_attn.unmerge()
    assert torch.allclose(saved["module.transformer.h.1.attn.c_attn.weight"],
                          trained.transformer.h[1].attn.c_attn.weight, atol=1e-6)
    model = fresh(**LORA)
    load_weights(model, tmp_path / "full.pt")
    assert_same_outputs(model, trained)


def test_save_full_of_full_fine_tuning_round_trips(tmp_path):
    base = trained_base()
    save_full(base, tmp_path / "full.pt")
    model = fresh()
    load_weights(model, tmp_path / "full.pt")
    assert torch.equal(logits(model), logits(base))


def test_lora_only_file_in_the_original_layout_plus_base(tmp_path):
    base = trained_base()
    trained = trained_lora(base)
    torch.save(hub_legacy_state(base), tmp_path / "base.bin")
    save_lora(trained, tmp_path / "model.1000.pt")
    saved = torch.load(tmp_path / "model.1000.pt", weights_only=True)
    assert set(saved) == {"model_state_dict", "loranlg"}  # the original's layout, plus what we record
    record = {k: v for k, v in saved["loranlg"].items() if k != "crc32"}
    assert record == {"version": 1, "model_card": None, "lora_dim": 2, "lora_alpha": 8, "lora_targets": "q,v",
                      "lora_scaling": "alpha_over_r", "dora": False, "lora_init": "kaiming",
                      "config": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 97}}
    assert set(saved["model_state_dict"]) == {f"module.transformer.h.{i}.attn.c_attn.lora_{m}"
                                              for i in range(2) for m in "AB"}
    assert all(v.dtype == torch.float32 for v in saved["model_state_dict"].values())
    model = fresh(**LORA)
    load_weights(model, tmp_path / "base.bin", lora_checkpoint=tmp_path / "model.1000.pt")
    assert torch.equal(logits(model), logits(trained))


def test_released_layout_without_the_wrapper_loads(tmp_path):
    base = trained_base()
    trained = trained_lora(base)
    bare = {"module." + k: v for k, v in trained.state_dict().items() if "lora_" in k}
    torch.save(bare, tmp_path / "gpt2_md_lora_e2e.pt")
    torch.save(hub_legacy_state(base), tmp_path / "base.bin")
    model = fresh(**LORA)
    load_weights(model, tmp_path / "base.bin", tmp_path / "gpt2_md_lora_e2e.pt")
    assert torch.equal(logits(model), logits(trained))


def test_a_full_lora_checkpoint_as_the_lora_file(tmp_path):
    base = trained_base()
    trained = trained_lora(base)
    torch.save(hub_legacy_state(base), tmp_path / "base.bin")
    save_full(trained, tmp_path / "full.pt")
    model = fresh(**LORA)
    load_weights(model, tmp_path / "base.bin", tmp_path / "full.pt")
    assert_same_outputs(model, trained)
    # Its frozen weights must be the base's: another base means a mix-up.
    torch.save(hub_legacy_state(trained_base(seed=5)), tmp_path / "other.bin")
    with pytest.raises(InputError, match="base weights differ"):
        load_weights(fresh(**LORA), tmp_path / "other.bin", tmp_path / "full.pt")


def test_a_merged_model_loads_cleanly(tmp_path):
    base = trained_base()
    trained = trained_lora(base)
    save_lora(trained, tmp_path / "lora.pt")
    torch.save(hub_legacy_state(base), tmp_path / "base.bin")
    model = trained_lora(base, seed=9)
    for layer in model.modules():
        if isinstance(layer, LoRAQKV):
            layer.merge()
    load_weights(model, lora_checkpoint=tmp_path / "lora.pt")  # only LoRA: the merge must be undone first
    assert_same_outputs(model, trained)


@pytest.mark.parametrize("dora", [False, True])
def test_a_merged_model_is_read_into_memory_without_random_weights(tmp_path, dora):
    """load_model(merge=True) with base weights (what beam search loads) builds no random weights: its tensors
    are those of the model built, loaded and merged the training way, bit for bit; with no LoRA file the
    plain LoRA model is the base file's own weights."""
    from loranlg.loading import load_model
    from loranlg.lora import merge_lora

    base = trained_base()
    torch.save(hub_legacy_state(base), tmp_path / "base.bin")
    torch.manual_seed(7)
    trained = build_model(tiny_config(), **LORA, dora=dora).eval()
    trained.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_" in name:
                param.add_(0.3 * torch.randn(param.shape))  # B non-zero, magnitudes moved
    save_lora(trained, tmp_path / "lora.pt")
    for lora_file in (tmp_path / "lora.pt", None):
        flags = dict(init_checkpoint=tmp_path / "base.bin", lora_checkpoint=lora_file, dora=dora)
        torch.use_deterministic_algorithms(True)  # torch.empty fills NaN: a tensor left unwritten shows
        try:
            merged = load_model(tiny_config(), 2, 8, merge=True, **flags).state_dict()
        finally:
            torch.use_deterministic_algorithms(False)
        reference = load_model(tiny_config(), 2, 8, **flags)
        merge_lora(reference)
        for key, value in reference.state_dict().items():
            if "lora_" not in key:
                assert torch.equal(merged[key], value), key
        if lora_file is None and not dora:
            for key, value in base.state_dict().items():
                assert torch.equal(merged[key], value), key


def test_lora_file_of_gpt2_md_is_about_1_5_mb(tmp_path):
    with torch.device("meta"):
        model = build_model("gpt2.md", lora_dim=4)
    for layer in model.modules():  # only the LoRA tensors need real memory
        if isinstance(layer, LoRAQKV):
            layer.lora_A = torch.nn.Parameter(torch.randn(layer.lora_A.shape))
            layer.lora_B = torch.nn.Parameter(torch.randn(layer.lora_B.shape))
    save_lora(model, tmp_path / "gpt2_md_lora.pt")
    size = os.path.getsize(tmp_path / "gpt2_md_lora.pt")
    assert 393_216 * 4 <= size < 1.6e6
    state = torch.load(tmp_path / "gpt2_md_lora.pt", weights_only=True)["model_state_dict"]
    assert state["module.transformer.h.23.attn.c_attn.lora_A"].shape == (8, 1024)
    assert state["module.transformer.h.23.attn.c_attn.lora_B"].shape == (2048, 4)


def test_export_merged_loads_in_transformers(tmp_path):
    trained = trained_lora(trained_base())
    path = export_merged(trained, str(tmp_path / "deploy") + os.sep)
    assert path == str(tmp_path / "deploy" / "model.safetensors")
    keys = set(load_file(path))
    assert "wte.weight" in keys and "h.1.attn.c_attn.weight" in keys
    assert not any("lora_" in k or k.startswith("transformer.") or "lm_head" in k for k in keys)
    hub = GPT2LMHeadModel.from_pretrained(tmp_path / "deploy", attn_implementation="eager").eval()
    assert hub.config.n_embd == 32 and hub.config.resid_pdrop == 0.0
    assert (hub_logits(hub, IDS) - logits(trained)).abs().max() < 1e-4
    # The same file is a hub checkpoint for us too: a model without LoRA gives the LoRA model's numbers.
    plain = fresh()
    load_weights(plain, path)
    assert_same_outputs(plain, trained, atol=1e-4)


def test_export_merged_to_a_file_path(tmp_path):
    trained = trained_lora(trained_base())
    export_merged(trained, tmp_path / "merged.safetensors")
    assert os.listdir(tmp_path) == ["merged.safetensors"]
    assert not trained.transformer.h[0].attn.c_attn.merged  # the model itself is left as it was


def test_old_pickle_needing_full_unpickling_loads_with_a_note(tmp_path, capsys):
    base = trained_base()
    state = {"model_state_dict": hub_legacy_state(base), "args": argparse.Namespace(lr=0.0002)}
    torch.save(state, tmp_path / "with_args.pt")
    model = fresh()
    load_weights(model, tmp_path / "with_args.pt")
    assert torch.equal(logits(model), logits(base))
    assert "weights_only" in capsys.readouterr().err


# ---------------------------------------------------------------- bad checkpoints

def error_of(init=None, lora=None, **model_lora):
    with pytest.raises(InputError) as caught:
        load_weights(fresh(**model_lora), init, lora)
    return str(caught.value)


def test_missing_keys_are_named(tmp_path):
    state = hub_legacy_state(trained_base())
    del state["h.1.mlp.c_fc.bias"]
    torch.save(state, tmp_path / "cut.bin")
    message = error_of(tmp_path / "cut.bin")
    assert "missing weights: h.1.mlp.c_fc.bias" in message and str(tmp_path / "cut.bin") in message


def test_unexpected_keys_are_named(tmp_path):
    state = hub_legacy_state(trained_base())
    state["h.0.mlp.gate.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "extra.safetensors")
    assert "unexpected weights: h.0.mlp.gate.weight" in error_of(tmp_path / "extra.safetensors")


def test_wrong_shapes_are_named(tmp_path):
    state = hub_legacy_state(trained_base())
    state["wpe.weight"] = torch.zeros(64, 32)
    torch.save(state, tmp_path / "short.bin")
    assert "wrong shapes: wpe.weight [64, 32] (model: [128, 32])" in error_of(tmp_path / "short.bin")


def test_a_checkpoint_of_another_card_says_which(tmp_path):
    other = build_model("gpt2.tiny")  # n_embd 64 while the model has 32
    torch.save(hub_legacy_state(other), tmp_path / "tiny.bin")
    message = error_of(tmp_path / "tiny.bin")
    assert "this checkpoint is gpt2.tiny (n_embd=64, n_layer=2)" in message
    assert "the model is n_embd=32, n_layer=2" in message


def test_lora_tensors_without_lora_dim(tmp_path):
    save_full(trained_lora(trained_base()), tmp_path / "full.pt")
    assert "the model has no LoRA (lora_dim 0)" in error_of(tmp_path / "full.pt")


def test_lora_rank_mismatch(tmp_path):
    torch.save(hub_legacy_state(trained_base()), tmp_path / "base.bin")
    save_lora(trained_lora(trained_base()), tmp_path / "r2.pt")
    message = error_of(tmp_path / "base.bin", tmp_path / "r2.pt", lora_dim=4)
    assert "LoRA rank 2 in the file" in message and "lora_dim 4" in message


def test_lora_slice_mismatch(tmp_path):
    torch.save(hub_legacy_state(trained_base()), tmp_path / "base.bin")
    save_lora(trained_lora(trained_base()), tmp_path / "qv.pt")
    message = error_of(tmp_path / "base.bin", tmp_path / "qv.pt", lora_dim=2, lora_slices="qkv")
    assert "2 slice(s)" in message and "adapts 3 (qkv)" in message


def test_a_lora_only_file_as_the_init_checkpoint(tmp_path):
    save_lora(trained_lora(trained_base()), tmp_path / "model.1000.pt")
    assert "only LoRA tensors" in error_of(tmp_path / "model.1000.pt", **LORA)


def test_a_lora_file_without_lora(tmp_path):
    torch.save(hub_legacy_state(trained_base()), tmp_path / "base.bin")
    assert "no LoRA tensors" in error_of(tmp_path / "base.bin", tmp_path / "base.bin", **LORA)


def test_lora_file_missing_a_layer(tmp_path):
    torch.save(hub_legacy_state(trained_base()), tmp_path / "base.bin")
    save_lora(trained_lora(trained_base()), tmp_path / "lora.pt")
    state = torch.load(tmp_path / "lora.pt", weights_only=True)
    del state["model_state_dict"]["module.transformer.h.1.attn.c_attn.lora_B"]
    del state["loranlg"]  # as the original's files: no checksum (ours would call the edited file damaged)
    torch.save(state, tmp_path / "lora.pt")
    message = error_of(tmp_path / "base.bin", tmp_path / "lora.pt", **LORA)
    assert "missing LoRA tensors: h.1.attn.c_attn.lora_B" in message


def test_an_untied_head_is_refused(tmp_path):
    base = trained_base()
    state = hub_legacy_state(base, "transformer.")
    state["lm_head.weight"] = torch.zeros_like(base.transformer.wte.weight)
    torch.save(state, tmp_path / "untied.bin")
    assert "lm_head.weight differs from wte.weight" in error_of(tmp_path / "untied.bin")


@pytest.mark.parametrize("content, expected", [
    (b"name : Blue Spice || a text file\n", "not a PyTorch checkpoint"),
    (b"", "not a PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, expected):
    (tmp_path / "x.bin").write_bytes(content)
    assert expected in error_of(tmp_path / "x.bin")


def test_truncated_checkpoint(tmp_path):
    torch.save(hub_legacy_state(trained_base()), tmp_path / "whole.bin")
    data = (tmp_path / "whole.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:len(data) // 2])
    assert "not a PyTorch checkpoint" in error_of(tmp_path / "cut.bin")


def test_missing_file_and_directory(tmp_path):
    assert "checkpoint not found" in error_of(tmp_path / "nope.bin")
    assert "found a directory" in error_of(tmp_path)


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    assert "expected a state dict" in error_of(tmp_path / "list.pt")
    torch.save({"model_state_dict": {"wte.weight": 3}}, tmp_path / "int.pt")
    assert "not a tensor" in error_of(tmp_path / "int.pt")


def test_build_model_rejects_bad_options():
    for kwargs in (dict(card="gpt2.xl"), dict(card="gpt2.tiny", lora_dim=-1),
                   dict(card="gpt2.tiny", lora_dim=2, lora_slices="qo"),
                   dict(card="gpt2.tiny", lora_dim=2, lora_dropout=1.0)):
        with pytest.raises(InputError):
            build_model(**kwargs)


def test_the_oldest_suffixes_g_b_w_load(tmp_path):
    """Very old GPT-2 conversions name LayerNorm gains `.g` and biases `.b` and weights `.w`; the original
    renames them, and so do we."""
    base = trained_base()
    renamed = {}
    for key, value in hub_legacy_state(base).items():
        if key.endswith(".weight"):
            key = key[:-len(".weight")] + (".g" if ".ln_" in key or key.startswith("ln_") else ".w")
        elif key.endswith(".bias") and not key.endswith(".attn.bias"):  # not the mask buffer
            key = key[:-len(".bias")] + ".b"
        renamed[key] = value
    assert "h.0.ln_1.g" in renamed and "h.0.attn.c_attn.w" in renamed and "h.0.attn.c_attn.b" in renamed
    torch.save(renamed, tmp_path / "old_names.bin")
    model = fresh()
    load_weights(model, tmp_path / "old_names.bin")
    assert torch.equal(logits(model), logits(base))


def test_wrapped_models_are_unwrapped(tmp_path):
    class DataParallelLike(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    trained = trained_lora(trained_base())
    save_lora(DataParallelLike(trained), tmp_path / "lora.pt")
    model = trained_lora(trained_base())  # same base, other LoRA values
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.lora_B.zero_()
    load_weights(DataParallelLike(model), lora_checkpoint=tmp_path / "lora.pt")
    assert torch.equal(logits(model), logits(trained))
