"""docs/checkpoints.md's Hugging Face walkthrough, run as written: a custom-size (6-layer) GPT-2 directory trains
(gpt2_ft.py), decodes (gpt2_beam.py) and exports (gpt2_export.py); the exports load in transformers and peft with
our numbers; the hub upload runs against a stand-in HfApi; a PEFT adapter decodes as the LoRA file it came from."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, encoded_e2e_sample
from test_train import write_jsonl

pytest.importorskip("peft")
MARK = "<!-- tests/test_hf_docs.py runs this block -->"


def marked_blocks():
    """(language, code) of each block of docs/checkpoints.md that follows MARK, in order."""
    text = (REPO / "docs" / "checkpoints.md").read_text(encoding="utf-8")
    return re.findall(re.escape(MARK) + r"\n```(\w+)\n(.*?)\n```", text, flags=re.S)


class StandInHub:
    """huggingface_hub.HfApi's create_repo / upload_folder, recording instead of uploading."""
    uploads = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, exist_ok=False, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, folder_path, repo_id, **kwargs):
        StandInHub.uploads.append((repo_id, sorted(os.listdir(folder_path))))


@pytest.mark.slow
def test_the_docs_walkthrough_a_6_layer_gpt2_directory_trains_decodes_exports(tmp_path, shared_dir, vocab_dir, monkeypatch):
    examples = encoded_e2e_sample(shared_dir, vocab_dir, stride=400, count=12)
    os.symlink(REPO / "src", tmp_path / "src")
    (tmp_path / "data" / "e2e").mkdir(parents=True)
    write_jsonl(tmp_path / "data" / "e2e" / "train.jsonl", examples[:8])
    write_jsonl(tmp_path / "data" / "e2e" / "valid.jsonl", examples[8:10])
    write_jsonl(tmp_path / "data" / "e2e" / "test.jsonl", examples[8:12])
    (tmp_path / "pretrained_checkpoints").mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(vocab_dir / name, tmp_path / "pretrained_checkpoints" / name)
    (tmp_path / "bin").mkdir()
    os.symlink(sys.executable, tmp_path / "bin" / "python")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", StandInHub)

    blocks = marked_blocks()
    assert [language for language, _ in blocks] == ["python", "bash", "python", "python", "bash"]
    for language, code in blocks:
        if language == "python":
            exec(compile(code, "docs/checkpoints.md", "exec"), {"__name__": "docs"})
        else:
            done = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]

    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from loranlg.loading import load_model
    work = tmp_path / "trained_models" / "my-gpt2-6l" / "e2e"
    ours = load_model(None, 4, 32, init_checkpoint="my-gpt2-6l", lora_checkpoint=work / "model.20.pt").eval()
    assert (ours.config.n_layer, ours.config.n_embd) == (6, 96)
    assert ours.transformer.h[5].attn.c_attn.lora_B.abs().max() > 0  # it trained
    ids = torch.tensor([examples[9][0]])
    with torch.no_grad():
        want = ours(ids)
        merged = GPT2LMHeadModel.from_pretrained("exports/my-gpt2-6l-e2e", attn_implementation="eager").eval()
        assert (merged(ids).logits - want).abs().max() < 1e-5
        base = GPT2LMHeadModel.from_pretrained("my-gpt2-6l", attn_implementation="eager")
        adapted = PeftModel.from_pretrained(base, "exports/my-gpt2-6l-e2e-lora").eval()
        assert (adapted(ids).logits - want).abs().max() < 1e-5
    predictions = (work / "predict.20.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert (work / "predict.peft.jsonl").read_text().splitlines() == predictions  # the adapter is the same LoRA
    assert StandInHub.uploads == [
        ("your-name/my-gpt2-6l", ["config.json", "generation_config.json", "model.safetensors"]),
        ("your-name/my-gpt2-6l-e2e-lora", ["adapter_config.json", "adapter_model.safetensors"])]
