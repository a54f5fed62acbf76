"""checkpoint_writer.py: model.{step}.pt and resume.pt written in the background are the files the synchronous
code wrote, hold the weights of their step even when the next step changes them during the write, and a failed
write stops the run with one line naming the file and what is kept."""

import os
import tempfile
import threading
import time

import pytest
import torch

import gpt2_ft
from conftest import tiny_config
from loranlg import checkpoint, checkpoint_writer, data, file_record, optim
from loranlg.distributed import DistContext, gather_objects
from loranlg.errors import RunError
from loranlg.files import atomic_output
from loranlg.loss import LMObjective
from loranlg.model import build_model, unwrap
from loranlg.resume import resume_state, rng_state
from test_faults import EXAMPLES, ft_flags
from test_train import write_jsonl

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA GPU"))]


def synchronous_save_resume(path, settings, position, model, optimizer, schedule, scaler, micro_losses, ctx,
                            train_set, valid_set):
    """resume.save_resume as it was before the writer (commit dd187d5), the reference."""
    ranks = gather_objects({"rng": rng_state(ctx, train_set, valid_set),
                            "micro_losses": [float(x) for x in micro_losses]}, ctx)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    state = {
        "settings": settings, **position,
        "trainable": {n: p.detach().cpu() for n, p in named},
        "grads": {n: p.grad.detach().cpu() for n, p in named if p.grad is not None},
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ranks": ranks,
    }
    with atomic_output(path, "wb") as handle:
        torch.save(file_record.sealed(state, unwrap(model).config), handle)


def trained_state(device):
    """A LoRA model after two Adam updates, its gradients kept (as in the middle of an accumulation)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(), lora_dim=4, lora_alpha=8).to(device)
    optimizer = optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            capturable=device == "cuda")
    schedule = optim.Schedule(optimizer, "linear", 1, 10)
    objective = LMObjective(model)
    ids = torch.randint(0, 97, (2, 9), device=device)
    positions, weights = torch.arange(4, 14, device=device), torch.ones(10, device=device)
    for _ in range(2):
        objective(ids, ids.roll(-1, 1), positions, weights).backward()
        optimizer.step()
        schedule.step()
    dataset = data.FTDataset(EXAMPLES, 2, 16)
    return model, optimizer, schedule, (DistContext(device=torch.device(device)), dataset, dataset)


def change_everything(model, optimizer):
    """What the next step does to the saved tensors, in place."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
                p.grad.mul_(3.0)
        for tensor in optimizer.state_tensors():
            tensor.add_(1.0)


def assert_same_content(got, want, where="file"):
    assert type(got) is type(want), where
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got.cpu(), want.cpu()), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            assert_same_content(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want)):
            assert_same_content(a, b, f"{where}[{index}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("device", DEVICES)
def test_background_files_equal_the_synchronous_ones_though_the_next_step_changes_the_weights(
        tmp_path, monkeypatch, device):
    model, optimizer, schedule, (ctx, train_set, valid_set) = trained_state(device)
    settings, position = {"lr": 1e-2}, {"train_step": 2, "epoch": 1, "batch_in_epoch": 2, "finished": False}
    resume_args = (settings, position, model, optimizer, schedule, None, [], ctx, train_set, valid_set)
    (tmp_path / "sync").mkdir()
    checkpoint.save_model(model, tmp_path / "sync" / "model.2.pt")
    synchronous_save_resume(tmp_path / "sync" / "resume.pt", *resume_args)

    release = threading.Event()
    write = checkpoint_writer.write_torch

    def write_after_the_next_step(obj, path):
        assert release.wait(60)
        write(obj, path)

    monkeypatch.setattr(checkpoint_writer, "write_torch", write_after_the_next_step)
    work = tmp_path / "async"
    files = [(str(work / "model.2.pt"), checkpoint.model_state(model, on_cpu=False)),
             (str(work / "resume.pt"), resume_state(*resume_args))]
    written = []
    writer = checkpoint_writer.CheckpointWriter()
    writer.save(files, model.config, written.append)
    change_everything(model, optimizer)
    release.set()
    writer.wait()

    assert written == [path for path, _ in files]
    for name in ("model.2.pt", "resume.pt"):
        if device == "cpu":
            assert (work / name).read_bytes() == (tmp_path / "sync" / name).read_bytes(), name
        else:  # the synchronous resume.pt held the optimizer's tensors as GPU tensors
            load = lambda path: torch.load(path, map_location="cpu", weights_only=False)  # noqa: E731
            assert_same_content(load(work / name), load(tmp_path / "sync" / name), name)


@pytest.fixture
def train_data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", EXAMPLES)


@pytest.mark.parametrize("max_step", [6, 4])  # the failure is raised at the next save (step 6), or at the end
def test_a_failed_background_write_stops_the_run_naming_the_file_and_what_is_kept(
        tmp_path, train_data, monkeypatch, max_step):
    mkstemp = tempfile.mkstemp

    def read_only_for_model_4(*args, prefix="", **kwargs):  # what a directory made read-only gives
        if "model.4.pt" in prefix:
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only_for_model_4)
    work = tmp_path / "run"
    with pytest.raises(RunError) as caught:
        gpt2_ft.main(ft_flags(train_data, work, "--max_step", max_step))
    assert str(caught.value) == (f"{work / 'model.4.pt'}: cannot write here: Permission denied; the last good "
                                 f"checkpoint is kept: {work / 'model.2.pt'} (and {work / 'resume.pt'} of step 2)")
    assert caught.value.exit_code == 1
    assert sorted(os.listdir(work)) == ["metrics.jsonl", "model.2.pt", "resume.pt"]
    assert torch.load(work / "resume.pt", weights_only=False)["train_step"] == 2
    assert not [t for t in threading.enumerate() if t.name == "checkpoint-writer"]


def test_the_run_ends_once_its_last_files_are_written(tmp_path, train_data, monkeypatch):
    write = checkpoint_writer.write_torch

    def slow_write(obj, path):
        time.sleep(0.5)
        write(obj, path)

    monkeypatch.setattr(checkpoint_writer, "write_torch", slow_write)
    work = tmp_path / "run"
    gpt2_ft.main(ft_flags(train_data, work, "--max_step", 3, "--save_interval", 2))
    assert not [t for t in threading.enumerate() if t.name == "checkpoint-writer"]
    assert sorted(os.listdir(work)) == ["metrics.jsonl", "model.2.pt", "model.3.pt", "resume.pt"]
    resume = torch.load(work / "resume.pt", weights_only=False)
    assert resume["train_step"] == 3 and resume["finished"]
    saved = torch.load(work / "model.3.pt", weights_only=True)["model_state_dict"]
    for name, tensor in resume["trainable"].items():
        assert torch.equal(saved["module." + name], tensor), name
