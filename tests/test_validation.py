"""validation.py's packed validation loss against the original's definition, computed here batch by batch with
plain padded batches and full logits, on real E2E valid examples (some cut to --seq_len, a last batch filled
with random examples)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import encoded_e2e_sample, tiny_config
from loranlg import data, validation
from loranlg.distributed import DistContext
from loranlg.loss import LMObjective
from loranlg.model import build_model
from test_train import hand_batch, hand_loss

SEQ_LEN, BATCH, SEED = 64, 4, 110
VOCAB = 1000


@pytest.fixture(scope="module")
def examples(shared_dir, vocab_dir):
    """151 E2E valid examples (the last batch of 4 is filled), their token ids renumbered into the small
    vocabulary of the ids they use (a tiny model's head)."""
    encoded = encoded_e2e_sample(shared_dir, vocab_dir, stride=31, count=1000)
    vocab = {t: i for i, t in enumerate(sorted({t for c, x in encoded for t in c + x}))}
    assert len(vocab) <= VOCAB
    return [([vocab[t] for t in c], [vocab[t] for t in x]) for c, x in encoded]


def lora_model(seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_config(vocab_size=VOCAB), lora_dim=4, lora_alpha=32, lora_dropout=0.1)
    with torch.no_grad():  # B = 0 would leave LoRA out of the numbers
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    return model


def rank_batches(dataset, rank=0, world_size=1):
    sampler = data.make_sampler(dataset, DistContext(rank=rank, world_size=world_size), SEED)
    return data.batch_indices(sampler, BATCH, epoch=None, drop_last=False)


def reference_mean(model, dataset, batches):
    """The mean over the batches of sum(loss * mask) / (sum(mask) + 1e-4), one padded batch at a time."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            items = [dataset[i] for i in batch]  # (tokens cut to seq_len + 1, context length)
            inputs, targets, mask = hand_batch([(ids[:n], ids[n:]) for ids, n in items], SEQ_LEN)
            total += hand_loss(model(inputs), targets, mask, 0.0).item()
    return total / len(batches)


@pytest.mark.parametrize("pack_tokens", [None, 100_000])  # None: validation.CPU_PACK_TOKENS, several rows
def test_packed_validation_equals_the_batch_by_batch_loss(examples, pack_tokens):
    model = lora_model()
    dataset, reference_set = (data.FTDataset(examples, BATCH, SEQ_LEN) for _ in range(2))
    batches = rank_batches(dataset)
    assert any(i >= len(examples) for b in batches for i in b)  # random fills
    assert any(len(c) + len(x) > SEQ_LEN + 1 for c, x in examples)  # some examples are cut
    packs = list(validation.packs(data.FTDataset(examples, BATCH, SEQ_LEN), batches,
                                  pack_tokens or validation.CPU_PACK_TOKENS))
    assert sum(len(items) for items, _ in packs) == 4 * len(batches)
    assert (len(packs) > 1) == (pack_tokens is None)

    want = reference_mean(model, reference_set, batches)
    objective = LMObjective(model)
    objective.train()
    loss, ppl = validation.validation_loss(objective, dataset, batches, DistContext(), pack_tokens)
    assert loss == pytest.approx(want, rel=1e-5)
    assert ppl == pytest.approx(torch.tensor(want).exp().item(), rel=1e-5)
    assert objective.training  # back in training mode
    assert dataset.fill_rng.getstate() == reference_set.fill_rng.getstate()  # the same random fills drawn


def one_rank(rank, world_size, init_file, examples, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        dataset = data.FTDataset(examples, BATCH, SEQ_LEN)
        ctx = DistContext(rank=rank, world_size=world_size)
        loss, _ = validation.validation_loss(LMObjective(lora_model()), dataset, rank_batches(dataset, rank, 2),
                                             ctx, pack_tokens=300)
        torch.save(loss, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_mean_of_their_batch_means(examples, tmp_path):
    mp.spawn(one_rank, args=(2, str(tmp_path / "init"), examples[:41], str(tmp_path)), nprocs=2)
    model = lora_model()
    want = sum(reference_mean(model, data.FTDataset(examples[:41], BATCH, SEQ_LEN),
                              rank_batches(data.FTDataset(examples[:41], BATCH, SEQ_LEN), rank, 2))
               for rank in range(2)) / 2
    got = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert got[0] == got[1] == pytest.approx(want, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_on_the_gpu_beside_compiled_blocks(examples, precision, tolerance):
    """As a run on a GPU has it: the blocks compiled (and run once for training), the frozen matrices and the
    head kept in bf16 under --precision bf16."""
    from loranlg.precision import autocast_dtype, store_frozen_matrices
    from loranlg.train_step import compile_objective, uncompile_objective

    model = lora_model()
    batches = rank_batches(data.FTDataset(examples, BATCH, SEQ_LEN))
    want = reference_mean(model, data.FTDataset(examples, BATCH, SEQ_LEN), batches)
    model.cuda()
    dtype = autocast_dtype(precision)
    objective = LMObjective(model, precision, store_frozen_matrices(model, dtype) if dtype else None)
    assert compile_objective(objective, {})
    try:
        batch = {k: v.cuda() for k, v in data.collate_packed([(c + x, len(c)) for c, x in examples[:8]], SEQ_LEN,
                                                             16, 64, 64).items()}
        objective(batch["input"], batch["target"], batch["positions"], batch["weights"], 0.1,
                  {name: batch[name] for name in data.PACKING_KEYS}).backward()
        loss, _ = validation.validation_loss(objective, data.FTDataset(examples, BATCH, SEQ_LEN), batches,
                                             DistContext(device=torch.device("cuda")), pack_tokens=500)
    finally:
        uncompile_objective(objective)
    assert loss == pytest.approx(want, rel=tolerance)
