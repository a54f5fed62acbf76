"""The Hugging Face formats (loranlg/hf_formats.py, src/gpt2_export.py) against transformers and peft as
oracles: PEFT adapters out and in, transformers directories of any size, nanoGPT checkpoints, merged exports."""

import json
import os

import pytest
import torch
from conftest import run_script, tiny_config
from hf_oracle import hub_config, hub_twin, randomize
from transformers import GPT2LMHeadModel

from loranlg import hf_formats
from loranlg.checkpoint import save_lora
from loranlg.errors import InputError
from loranlg.lora import LoRAQKV, lora_state_dict
from loranlg.lora_variants import lora_settings
from loranlg.loading import load_model
from loranlg.model import build_model

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

IDS = [5, 17, 3, 88, 41, 0, 9, 60]
TOL = 1e-5  # fp32


def ours_with_lora(r=2, alpha=8, seed=0, **config):
    """A tiny model of ours with non-zero LoRA tensors (as after training)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(**config), lora_dim=r, lora_alpha=alpha).eval()
    randomize(model, seed, scale=0.1)
    return model


def logits(model, ids=IDS):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out)[0]


def close(a, b, tol=TOL):
    return (a - b).abs().max().item() < tol


def save_base_dir(model, path):
    """Our base weights as a transformers directory (what a user's own GPT-2 looks like)."""
    hub_twin(model).save_pretrained(path)
    return path


# ---------------------------------------------------------------- the mapping

def test_a_q_v_lora_is_a_rank_2r_lora_of_the_whole_c_attn():
    """The module docstring's claim: A stacked, B block-structured with zero k rows, lora_alpha 2 alpha."""
    torch.manual_seed(0)
    d, r, alpha = 8, 3, 5.0
    layer = LoRAQKV(d, r, alpha)
    with torch.no_grad():
        layer.lora_B.normal_()
    blocks = [(part, layer.A(s), layer.B(s)) for s, part in enumerate(layer.enabled)]
    A, B = hf_formats.slices_to_peft(blocks, 3, d)
    assert A.shape == (2 * r, d) and B.shape == (3 * d, 2 * r)
    assert torch.equal(A, layer.lora_A) and torch.equal(B, layer.expanded_B())
    assert torch.count_nonzero(B[d:2 * d]) == 0  # k untouched
    x = torch.randn(4, d)
    peft_scaling = (2 * alpha) / (2 * r)  # PEFT: lora_alpha / r with lora_alpha = 2 alpha, r = 2r
    with torch.no_grad():
        assert torch.allclose(layer.frozen(x) + peft_scaling * x @ A.t() @ B.t(), layer.formula(x), atol=1e-6)
    back = hf_formats.peft_to_slices(A, B, layer.enabled, d)
    assert all(torch.equal(a, layer.A(s)) and torch.equal(b, layer.B(s)) for s, (_, a, b) in enumerate(back))
    B_k = B.clone()
    B_k[d, 0] = 1.0  # a non-zero k row: not our block structure any more
    assert hf_formats.peft_to_slices(A, B_k, layer.enabled, d) is None


# ---------------------------------------------------------------- PEFT out

def test_peft_export_gives_peftmodels_logits(tmp_path):
    ours = ours_with_lora(r=2, alpha=8)
    hf_formats.write_peft_adapter(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 16, ["c_attn"])
    peft_model = PeftModel.from_pretrained(hub_twin(ours), tmp_path / "adapter").eval()
    c_attn = peft_model.base_model.model.transformer.h[0].attn.c_attn
    assert c_attn.fan_in_fan_out and c_attn.scaling["default"] == 8 / 2  # alpha / r kept
    assert close(logits(peft_model), logits(ours))
    # merging goes through fan_in_fan_out (Conv1D's [in, out] weight): still the same numbers
    merged = peft_model.merge_and_unload()
    assert torch.allclose(merged.transformer.h[1].attn.c_attn.weight,
                          ours.transformer.h[1].attn.c_attn.weight + ours.transformer.h[1].attn.c_attn.delta_weight(),
                          atol=1e-6)
    assert close(logits(merged), logits(ours))


@pytest.mark.parametrize("variant", [dict(lora_targets="q,k,v,o"), dict(lora_targets="all", dora=True),
                                     dict(lora_targets="q,v,fc", lora_scaling="rs", dora=True)])
def test_peft_export_of_the_lora_variants_gives_peftmodels_logits(tmp_path, variant):
    """Other targets, rsLoRA and DoRA (issue 23) written as the PEFT adapter that computes the same model."""
    torch.manual_seed(0)
    ours = build_model(tiny_config(), lora_dim=2, lora_alpha=8, **variant).eval()
    randomize(ours, 0, scale=0.1)
    hf_formats.write_peft_adapter(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] == bool(variant.get("dora")) and config["use_rslora"] == (variant.get("lora_scaling") == "rs")
    peft_model = PeftModel.from_pretrained(hub_twin(ours), tmp_path / "adapter").eval()
    assert close(logits(peft_model), logits(ours), tol=1e-4 if variant.get("dora") else TOL)


def test_our_peft_adapter_reads_back_as_our_layout(tmp_path):
    ours = ours_with_lora(r=2, alpha=8)
    save_base_dir(ours, tmp_path / "base")
    hf_formats.write_peft_adapter(ours, tmp_path / "adapter")
    shape, state = hf_formats.read_peft_adapter(tmp_path / "adapter")
    assert shape == {"rank": 2, "alpha": 8.0, "targets": "q,v", "scaling": "alpha_over_r", "dora": False}
    assert torch.equal(state["h.1.attn.c_attn.lora_A"], ours.transformer.h[1].attn.c_attn.lora_A)
    assert torch.equal(state["h.1.attn.c_attn.lora_B"], ours.transformer.h[1].attn.c_attn.lora_B)
    back = load_model(None, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "adapter").eval()
    assert (back.config.lora_dim, back.config.lora_alpha, back.config.lora_slices) == (2, 8, (True, False, True))
    assert close(logits(back), logits(ours))
    # and on to the original's LoRA file, which reads back with the flags
    save_lora(back, tmp_path / "lora.pt")
    again = load_model(None, 2, 8, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "lora.pt").eval()
    assert close(logits(again), logits(ours))


# ---------------------------------------------------------------- PEFT in

def peft_trained(tmp_path, use_rslora=False, steps=5):
    """A tiny transformers GPT-2 saved as a directory, and a LoRA on its c_attn trained by peft."""
    torch.manual_seed(1)
    base = GPT2LMHeadModel(hub_config(tiny_config())).eval()
    base.save_pretrained(tmp_path / "base")
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base", attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn"], lora_dropout=0.0,
                                            use_rslora=use_rslora))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 97, (2, 12), generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(tmp_path / "adapter")
    return model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_an_adapter_trained_by_peft_gives_pefts_logits(tmp_path, use_rslora):
    trained = peft_trained(tmp_path, use_rslora)
    B = trained.base_model.model.transformer.h[0].attn.c_attn.lora_B["default"].weight
    assert torch.count_nonzero(B[32:64]) > 0  # peft adapts k too
    ours = load_model(None, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "adapter").eval()
    assert ours.config.lora_slices == (True, True, True) and ours.config.lora_dim == 3
    assert close(logits(ours), logits(trained))
    # the adapter as --init_checkpoint brings its base (base_model_name_or_path is the local directory)
    alone = load_model(None, init_checkpoint=tmp_path / "adapter").eval()
    assert close(logits(alone), logits(trained))
    # and out again: peft reads our export of it
    hf_formats.write_peft_adapter(ours, tmp_path / "again")
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base", attn_implementation="eager")
    assert close(logits(PeftModel.from_pretrained(base, tmp_path / "again").eval()), logits(trained))


def test_a_peft_adapter_through_gpt2_beam_and_the_lora_file(tmp_path):
    trained = peft_trained(tmp_path)
    export = run_script("gpt2_export.py", "--init_checkpoint", tmp_path / "base", "--lora_checkpoint",
                        tmp_path / "adapter", "--format", "lora", "--output", tmp_path / "lora.pt")
    assert export.returncode == 0, export.stderr
    assert "this LoRA adapts q,k,v" in export.stderr
    ours = load_model(None, 3, 5, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "lora.pt").eval()
    assert close(logits(ours), logits(trained))


VARIANTS = [dict(lora_targets="k"), dict(lora_targets="o"), dict(lora_targets="q,k,v,o"), dict(lora_targets="all"),
            dict(lora_scaling="rs"), dict(dora=True), dict(lora_targets="q,k,v,o", dora=True),
            dict(lora_targets="v,proj", lora_scaling="rs", dora=True)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_every_variant_reads_back_from_its_peft_adapter(tmp_path, variant):
    """Export, then read back as the commands do (load_model, variant flags left out): the same tensors and
    settings, and the outputs of PeftModel on the exported adapter."""
    torch.manual_seed(0)
    ours = build_model(tiny_config(), lora_dim=2, lora_alpha=8, **variant).eval()
    randomize(ours, 0, scale=0.1)
    save_base_dir(ours, tmp_path / "base")
    hf_formats.write_peft_adapter(ours, tmp_path / "adapter")
    back = load_model(None, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "adapter").eval()
    assert (back.config.lora_dim, back.config.lora_alpha) == (2, 8)
    assert lora_settings(back.config) == lora_settings(ours.config)
    theirs, mine = lora_state_dict(back), lora_state_dict(ours)
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
    peft_model = PeftModel.from_pretrained(hub_twin(ours), tmp_path / "adapter").eval()
    assert close(logits(back), logits(peft_model), tol=1e-4 if variant.get("dora") else TOL)


def test_a_variant_adapter_through_the_command(tmp_path):
    """gpt2_export.py reads a q,k,v,o DoRA adapter without variant flags and writes the same adapter again, and
    its LoRA file, which reads back with the flags."""
    from safetensors.torch import load_file
    torch.manual_seed(0)
    ours = build_model(tiny_config(), lora_dim=2, lora_alpha=8, lora_targets="q,k,v,o", dora=True).eval()
    randomize(ours, 0, scale=0.1)
    save_base_dir(ours, tmp_path / "base")
    hf_formats.write_peft_adapter(ours, tmp_path / "adapter")
    common = ["--init_checkpoint", tmp_path / "base", "--lora_checkpoint", tmp_path / "adapter"]
    done = run_script("gpt2_export.py", *common, "--format", "peft", "--output", tmp_path / "again")
    assert done.returncode == 0, done.stderr
    assert "LoRA r=2 alpha=8 on q,k,v,o, DoRA" in done.stderr
    first, again = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("adapter", "again"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    done = run_script("gpt2_export.py", *common, "--format", "lora", "--output", tmp_path / "lora.pt")
    assert done.returncode == 0, done.stderr
    back = load_model(None, 2, 8, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "lora.pt",
                      lora_targets="q,k,v,o", dora=True).eval()
    assert close(logits(back), logits(ours), tol=1e-4)


def peft_made(tmp_path, **config):
    """A tiny transformers GPT-2 directory and a peft adapter on it with random non-zero tensors (full B)."""
    torch.manual_seed(1)
    GPT2LMHeadModel(hub_config(tiny_config())).eval().save_pretrained(tmp_path / "base")
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base", attn_implementation="eager")
    model = get_peft_model(base, LoraConfig(lora_dropout=0.0, **config))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    model.eval().save_pretrained(tmp_path / "adapter")
    return model


def test_an_adapter_made_by_peft_on_every_module_with_rslora_and_dora_reads(tmp_path):
    """peft's own adapter on c_attn (full B: q, k, v through one shared A), both c_proj and c_fc."""
    theirs = peft_made(tmp_path, r=3, lora_alpha=5, target_modules=["c_attn", "c_proj", "c_fc"], use_rslora=True,
                       use_dora=True)
    ours = load_model(None, init_checkpoint=tmp_path / "base", lora_checkpoint=tmp_path / "adapter").eval()
    assert lora_settings(ours.config) == {"lora_targets": "q,k,v,o,fc,proj", "lora_scaling": "rs", "dora": True,
                                          "lora_init": "kaiming"}
    assert ours.config.lora_dim == 3 and abs(ours.config.lora_alpha - 5) < 1e-9
    assert close(logits(ours), logits(theirs), tol=1e-4)


@pytest.mark.parametrize("change, named", [
    (dict(target_modules=["c_attn", "wte"]), "LoRA on other modules than GPT-2's (wte)"),
    (dict(target_modules=["c_attn"], bias="lora_only"), "trained biases (bias='lora_only')"),
    (dict(target_modules=["c_attn", "c_fc"], rank_pattern={"c_fc": 1}),
     "its modules come out at different ranks (c_attn (q, k, v through one shared A) 2, mlp.c_fc 1)"),
    (dict(target_modules=["c_attn", "c_fc"], alpha_pattern={"c_fc": 4}),
     "its modules have different scalings (c_attn (q, k, v through one shared A) 4, mlp.c_fc 2)"),
])
def test_adapters_we_cannot_represent_are_named(tmp_path, change, named):
    torch.manual_seed(1)
    base = GPT2LMHeadModel(hub_config(tiny_config()))
    get_peft_model(base, LoraConfig(r=2, **change)).save_pretrained(tmp_path / "adapter")
    with pytest.raises(InputError, match="not representable by our LoRA") as err:
        hf_formats.read_peft_adapter(tmp_path / "adapter")
    assert named in str(err.value)


# ---------------------------------------------------------------- transformers directories, merged exports

def test_a_custom_size_directory_loads_without_a_card(tmp_path):
    torch.manual_seed(0)
    hub = randomize(GPT2LMHeadModel(hub_config(tiny_config(n_layer=6, n_embd=48, vocab_size=101))), scale=0.1)
    hub.eval().save_pretrained(tmp_path / "six")
    ours = load_model(None, init_checkpoint=tmp_path / "six").eval()
    assert (ours.config.n_layer, ours.config.n_embd, ours.config.vocab_size) == (6, 48, 101)
    assert close(logits(ours), logits(hub))
    with pytest.raises(InputError, match="--model_card gpt2.tiny is .*n_layer=2.* but this model is .*n_layer=6"):
        load_model("gpt2.tiny", init_checkpoint=tmp_path / "six")


def test_merged_export_loads_in_transformers_with_its_tokenizer(tmp_path, vocab_dir):
    from transformers import AutoTokenizer

    from loranlg.tokenizer import GPT2BPE
    ours = ours_with_lora(r=2, alpha=8, vocab_size=50257)
    save_base_dir(ours, tmp_path / "base")
    hf_formats.write_peft_adapter(ours, tmp_path / "adapter")
    done = run_script("gpt2_export.py", "--init_checkpoint", tmp_path / "base", "--lora_checkpoint",
                      tmp_path / "adapter", "--format", "merged", "--vocab", vocab_dir, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    hub = GPT2LMHeadModel.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert close(logits(hub), logits(ours))
    text = "name : Blue Spice | Type : coffee shop"
    assert AutoTokenizer.from_pretrained(tmp_path / "out").encode(text) == GPT2BPE(vocab_dir).encode(text)


# ---------------------------------------------------------------- nanoGPT

def nanogpt_checkpoint(hub, bias=True, compiled=False):
    """What nanoGPT's train.py saves: model_args, and the model's nn.Linear weights [out, in]."""
    state = {}
    for key, value in hub.state_dict().items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue
        if not bias and key.endswith(".bias"):
            continue
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.t()
        state[("_orig_mod." if compiled else "") + key] = value.clone()
    config = hub.config
    return {"model": state, "optimizer": {}, "iter_num": 7, "best_val_loss": torch.tensor(2.5),
            "model_args": dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                               block_size=config.n_positions, bias=bias, vocab_size=config.vocab_size, dropout=0.0),
            "config": {"dataset": "shakespeare", "learning_rate": 6e-4}}


@pytest.mark.parametrize("bias, compiled", [(True, False), (False, True)])
def test_a_nanogpt_checkpoint_loads(tmp_path, bias, compiled, capsys):
    torch.manual_seed(0)
    hub = randomize(GPT2LMHeadModel(hub_config(tiny_config(vocab_size=128, n_layer=3))), scale=0.1).eval()
    if not bias:  # nanoGPT's bias=False: every bias is zero
        with torch.no_grad():
            for name, param in hub.named_parameters():
                if name.endswith(".bias"):
                    param.zero_()
    torch.save(nanogpt_checkpoint(hub, bias, compiled), tmp_path / "ckpt.pt")
    ours = load_model(None, init_checkpoint=tmp_path / "ckpt.pt").eval()
    assert (ours.config.vocab_size, ours.config.n_layer) == (128, 3)
    assert close(logits(ours), logits(hub))  # transformers' GPT-2 uses the tanh GELU as we do
    assert "nanoGPT checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------- the command

def test_help_explains_every_flag():
    done = run_script("gpt2_export.py", "--help")
    assert done.returncode == 0
    for flag in ("--format", "--output", "--model_card", "--init_checkpoint", "--lora_checkpoint", "--lora_dim",
                 "--lora_alpha", "--vocab", "--base_model", "merged", "peft", "lora"):
        assert flag in done.stdout


def test_export_peft_and_lora_through_the_command(tmp_path):
    ours = ours_with_lora(r=2, alpha=8)
    save_base_dir(ours, tmp_path / "base")
    save_lora(ours, tmp_path / "model.10.pt")
    common = ["--init_checkpoint", tmp_path / "base", "--lora_checkpoint", tmp_path / "model.10.pt",
              "--lora_dim", 2, "--lora_alpha", 8]
    done = run_script("gpt2_export.py", *common, "--format", "peft", "--output", tmp_path / "peft")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "peft")) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base", attn_implementation="eager")
    assert close(logits(PeftModel.from_pretrained(base, tmp_path / "peft").eval()), logits(ours))
    done = run_script("gpt2_export.py", *common, "--format", "lora", "--output", tmp_path / "lora")
    assert done.returncode == 0, done.stderr
    saved = torch.load(tmp_path / "lora" / "lora.pt", weights_only=True)["model_state_dict"]
    original = torch.load(tmp_path / "model.10.pt", weights_only=True)["model_state_dict"]
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)


@pytest.mark.parametrize("setup, flags, message", [
    ("six", ["--model_card", "gpt2.tiny", "--init_checkpoint", "{six}", "--format", "merged"],
     "--model_card gpt2.tiny is gpt2.tiny (n_embd=64, n_layer=2), n_head=4, but this model is n_embd=32, n_layer=6"),
    ("", ["--model_card", "gpt2.tiny", "--lora_checkpoint", "x.pt", "--format", "merged"],
     "missing base: --format merged needs the base weights (--init_checkpoint)"),
    ("adapter", ["--init_checkpoint", "{adapter}", "--format", "merged"], "missing base: the adapter's base model"),
    ("mixed", ["--init_checkpoint", "{six}", "--lora_checkpoint", "{mixed}", "--format", "peft"],
     "not representable by our LoRA (on GPT-2's c_attn, c_proj, c_fc): its modules come out at different ranks"),
    ("adapter", ["--init_checkpoint", "{six}", "--lora_checkpoint", "{adapter}", "--dora", "--format", "peft"],
     "this adapter's LoRA has --dora off but the flag says on: leave --dora out"),
    ("adapter", ["--init_checkpoint", "{six}", "--lora_checkpoint", "{adapter}", "--lora_dim", "4", "--format",
                 "peft"], "this adapter is a rank-2 LoRA on q,k,v but --lora_dim is 4"),
    ("six", ["--init_checkpoint", "{six}", "--format", "peft"], "nothing to export: the model has no LoRA"),
    ("", ["--format", "lora"], "nothing to export"),
    ("", ["--model_card", "gpt2.tiny", "--init_checkpoint", "{tmp}", "--format", "merged"],
     "neither a transformers model (config.json) nor a PEFT adapter"),
])
def test_bad_input_is_one_error_line(tmp_path, setup, flags, message):
    torch.manual_seed(0)
    hub = GPT2LMHeadModel(hub_config(tiny_config(n_layer=6)))
    hub.save_pretrained(tmp_path / "six")
    if setup in ("adapter", "mixed"):
        config = LoraConfig(r=2, target_modules=["c_attn"] + (["c_fc"] if setup == "mixed" else []),
                            rank_pattern={"c_fc": 1} if setup == "mixed" else {})
        adapter = get_peft_model(GPT2LMHeadModel(hub_config(tiny_config(n_layer=6))), config)
        adapter.peft_config["default"].base_model_name_or_path = "someone/not-here"
        adapter.save_pretrained(tmp_path / setup)
    paths = {"six": tmp_path / "six", "adapter": tmp_path / "adapter", "mixed": tmp_path / "mixed", "tmp": tmp_path}
    argv = [f.format(**paths) for f in flags] + ["--output", tmp_path / "out"]
    done = run_script("gpt2_export.py", *argv)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], done.stderr
    assert all("Traceback" not in line for line in lines)
