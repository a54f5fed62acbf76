"""Training (SPEC 5): the loss, the data, the optimizer and schedule, and one real step against a hand
computation. Runs of the whole command live in test_train_runs.py."""

import json
import math
import random

import pytest
import torch

from conftest import tiny_config
from gpt2_ft import build_parser, check_args
from loranlg import checkpoint, data, loss, optim, train
from loranlg.distributed import DistContext
from loranlg.model import build_model
from loranlg.train_step import SpeedOptions


def write_jsonl(path, examples):
    with open(path, "w") as handle:
        for context, completion in examples:
            handle.write(json.dumps({"context": context, "completion": completion}) + "\n")
    return path


def random_ids(rng, shortest, longest, vocab=97):
    return [rng.randrange(vocab) for _ in range(rng.randint(shortest, longest))]


def hand_batch(examples, seq_len):
    """The original's per-example tensors, padded to seq_len, written out from SPEC 5's words."""
    inputs, targets, masks = [], [], []
    for context, completion in examples:
        tokens = context + completion
        n = min(len(tokens), seq_len)
        inputs.append(tokens[:n] + [0] * (seq_len - n))
        target = tokens[1:n + 1]
        targets.append(target + [0] * (seq_len - len(target)))
        # 1 from the last context token through the token before the last input token
        masks.append([1.0 if len(context) - 1 <= t <= n - 2 else 0.0 for t in range(seq_len)])
    return torch.tensor(inputs), torch.tensor(targets), torch.tensor(masks)


def hand_loss(logits, target, mask, s):
    logp = torch.log_softmax(logits.double(), dim=-1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    per_position = (1 - s) * nll + s * smooth
    return (per_position * mask).sum() / (mask.sum() + 1e-4)


# ------------------------------------------------------------------ loss

def loss_positions(mask, pad=0):
    """The loss positions and weights of a mask, as collate gives them, plus `pad` entries of weight 0."""
    found = mask.reshape(-1).nonzero().squeeze(1)
    positions = torch.cat((found, torch.zeros(pad, dtype=torch.long)))
    weights = torch.cat((mask.reshape(-1)[found], torch.zeros(pad)))
    return positions, weights


@pytest.mark.parametrize("s, pad", [(0.0, 0), (0.1, 0), (0.1, 5)])
def test_masked_loss_equals_full_logits_formula(s, pad):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    target = torch.randint(0, 50, (3, 7))
    mask = (torch.rand(3, 7) > 0.4).float()
    got = loss.masked_lm_loss(hidden, weight, target, *loss_positions(mask, pad), label_smooth=s)
    want = hand_loss(hidden @ weight.t(), target, mask, s)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    grad_got, = torch.autograd.grad(got, hidden)
    grad_want, = torch.autograd.grad(want, hidden)
    torch.testing.assert_close(grad_got, grad_want.float(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ data

def test_collate_builds_spec_mask_and_cuts_long_examples():
    items = [([11, 12, 13], [21, 22, 23]), ([31, 32], [41])]
    ds = data.FTDataset(items, batch_size=2, seq_len=10)
    batch = data.collate([ds[0], ds[1]], seq_len=10)
    assert batch["input"].tolist() == [[11, 12, 13, 21, 22, 23], [31, 32, 41, 0, 0, 0]]
    assert batch["target"].tolist() == [[12, 13, 21, 22, 23, 0], [32, 41, 0, 0, 0, 0]]
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]]
    # Cut to seq_len 5: the last input position's target is real but outside the mask, as the original.
    short = data.FTDataset(items, batch_size=2, seq_len=5)
    batch = data.collate([short[0]], seq_len=5)
    assert batch["input"].tolist() == [[11, 12, 13, 21, 22]]
    assert batch["target"].tolist() == [[12, 13, 21, 22, 23]]
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 0]]
    assert batch["positions"].tolist() == [2, 3]
    assert batch["weights"].tolist() == [1, 1]


def test_collate_pads_length_and_loss_positions_to_multiples():
    items = [([11, 12, 13], [21, 22, 23]), ([31, 32], [41])]
    ds = data.FTDataset(items, batch_size=2, seq_len=10)
    batch = data.collate([ds[0], ds[1]], seq_len=10, length_multiple=4, positions_multiple=3)
    assert batch["input"].tolist() == [[11, 12, 13, 21, 22, 23, 0, 0], [31, 32, 41, 0, 0, 0, 0, 0]]
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert batch["positions"].tolist() == [2, 3, 4, 9, 0, 0]  # flat indices at width 8, then padding
    assert batch["weights"].tolist() == [1, 1, 1, 1, 0, 0]


def test_collate_packed_puts_examples_end_to_end():
    items = [([11, 12, 13], [21, 22, 23]), ([31, 32], [41])]
    ds = data.FTDataset(items, batch_size=2, seq_len=10)
    batch = data.collate_packed([ds[0], ds[1]], seq_len=10, length_multiple=4, tokens_multiple=4,
                                positions_multiple=3)
    assert batch["input"].tolist() == [[11, 12, 13, 21, 22, 23, 31, 32, 41, 0, 0, 0]]
    assert batch["target"].tolist() == [[12, 13, 21, 22, 23, 0, 32, 41, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 0, 0]]
    assert batch["positions"].tolist() == [2, 3, 4, 7, 0, 0]
    assert batch["weights"].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["pad_index"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 0], [6, 7, 8, 0, 0, 0, 0, 0]]
    assert batch["pack_index"].tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 0, 0, 0]


def test_padding_to_longest_equals_padding_to_seq_len():
    torch.manual_seed(0)
    model = build_model(tiny_config(), lora_dim=2, lora_alpha=8)
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "lora_B"):
                layer.lora_B.normal_()
    objective = loss.LMObjective(model)
    rng = random.Random(1)
    items = [(random_ids(rng, 1, 6), random_ids(rng, 1, 9)) for _ in range(5)]
    ds = data.FTDataset(items, batch_size=5, seq_len=40)
    results = []
    # to the longest; to seq_len; to multiples of 16 tokens and 64 loss positions; packed into one row and
    # padded to 64 tokens, as the CUDA-graph step lays batches out
    packed = {"length_multiple": 16, "tokens_multiple": 64, "positions_multiple": 64}
    for collate, padding in ((data.collate, {}), (data.collate, {"pad_to": 40}),
                             (data.collate, {"length_multiple": 16, "positions_multiple": 64}),
                             (data.collate_packed, packed)):
        batch = collate([ds[i] for i in range(5)], seq_len=40, **padding)
        packing = {name: batch[name] for name in data.PACKING_KEYS} if "pad_index" in batch else None
        value = objective(batch["input"], batch["target"], batch["positions"], batch["weights"], 0.1, packing)
        grads = torch.autograd.grad(value, [p for p in model.parameters() if p.requires_grad])
        results.append((tuple(batch["input"].shape), len(batch["positions"]), value, grads))
    (short_shape, count, short_loss, short_grads), (long_shape, _, long_loss, long_grads) = results[:2]
    assert short_shape[1] < long_shape[1] == 40 and count < 64
    assert results[2][:2] == ((5, 16), 64) and results[3][:2] == ((1, 64), 64)
    for length, _, value, grads in results[1:]:
        torch.testing.assert_close(short_loss, value, rtol=1e-6, atol=0)
        for a, b in zip(short_grads, grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # and both equal the original's formula on full logits at seq_len padding
    inputs, targets, mask = hand_batch(items, 40)
    assert hand_loss(model(inputs), targets, mask, 0.1).item() == pytest.approx(long_loss.item(), rel=1e-5)


def test_dataset_rounds_up_to_batches_and_sampler_order():
    items = [([i + 1], [i + 2]) for i in range(10)]
    ds = data.FTDataset(items, batch_size=4, seq_len=8)
    assert len(ds) == 12 and ds.num_batches == 3
    fill = random.Random(911)
    assert [ds[i][0][0] for i in (10, 11, 10)] == [items[fill.randint(0, 9)][0][0] for _ in range(3)]
    for rank in range(2):
        sampler = data.make_sampler(ds, DistContext(rank=rank, world_size=2), seed=110)
        generator = torch.Generator()
        generator.manual_seed(110 + 3)  # DistributedSampler: randperm seeded with seed + epoch
        order = torch.randperm(12, generator=generator).tolist()[rank::2]
        assert data.batch_indices(sampler, 4, epoch=3) == [order[:4]]  # 6 per rank: the partial batch dropped
        assert data.batch_indices(sampler, 4, epoch=3, drop_last=False) == [order[:4], order[4:]]


# ------------------------------------------------------------------ optimizer and schedule

@pytest.mark.parametrize("correct_bias", [True, False])
def test_adam_follows_spec_formula(correct_bias):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.1
    opt = optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, correct_bias=correct_bias)
    ref = p.detach().double().clone()
    m = torch.zeros_like(ref)
    v = torch.zeros_like(ref)
    for t in range(1, 4):
        g = torch.randn(4, 3)
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) if correct_bias else lr
        ref = ref - step * m / (v.sqrt() + eps)
        ref = ref - lr * wd * ref
        torch.testing.assert_close(p.detach().double(), ref, rtol=1e-6, atol=1e-7)


def test_schedules_step_per_micro_batch():
    linear = [optim.lr_factor("linear", t, 2, 6) for t in range(8)]
    assert linear == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0])
    assert [optim.lr_factor("constant", t, 2, 6) for t in range(4)] == pytest.approx([0, 0.5, 1, 1])
    assert [optim.lr_factor("linear", t, 0, 4) for t in range(3)] == pytest.approx([1, 0.75, 0.5])
    cosine = [optim.lr_factor("cosine", t, 2, 8) for t in (0, 1, 2, 4, 8, 9)]
    assert cosine == pytest.approx([0, 0.5, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0, 0])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = optim.AdamW([p], lr=0.1)
    schedule = optim.Schedule(opt, "linear", 2, 6)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        schedule.step()
    assert seen == pytest.approx([0, 0.05, 0.1])


# ------------------------------------------------------------------ one real step, by hand

def test_two_steps_equal_hand_computation(tmp_path):
    """Warmup 1: update 1 runs at lr 0 (only Adam's moments move), update 2 at the full rate."""
    rng = random.Random(3)
    items = [(random_ids(rng, 2, 5), random_ids(rng, 2, 6)) for _ in range(4)]
    path = write_jsonl(tmp_path / "train.jsonl", items)
    lr, wd, b1, b2, eps, s, seed = 0.01, 0.01, 0.9, 0.999, 1e-6, 0.1, 110
    args = build_parser().parse_args([
        "--train_data", str(path), "--valid_data", str(path), "--train_batch_size", "2", "--seq_len", "16",
        "--lr", str(lr), "--weight_decay", str(wd), "--correct_bias", "--adam_beta2", str(b2),
        "--label_smooth", str(s), "--warmup_step", "1", "--max_step", "2", "--random_seed", str(seed),
        "--work_dir", str(tmp_path / "run"), "--log_interval", "1", "--lora_dim", "2", "--lora_alpha", "8"])
    check_args(args)
    torch.manual_seed(0)
    model = build_model(tiny_config(), lora_dim=2, lora_alpha=8)
    with torch.no_grad():  # B = 0 would give A no gradient: start from a non-zero B
        for layer in model.modules():
            if hasattr(layer, "lora_B"):
                layer.lora_B.normal_(std=0.5)
    reference = build_model(tiny_config(), lora_dim=2, lora_alpha=8)
    reference.load_state_dict(model.state_dict())
    lora = {n: p for n, p in reference.named_parameters() if p.requires_grad}

    train_set, valid_set, _ = train.load_datasets(args, vocab_size=97)
    train.train(args, DistContext(), model, train_set, valid_set, checkpoint.lora_state, log=lambda *a, **k: None)

    generator = torch.Generator()
    generator.manual_seed(seed + 1)  # epoch 1
    order = torch.randperm(4, generator=generator).tolist()
    losses, grads = [], []
    for batch in (order[:2], order[2:]):
        inputs, targets, mask = hand_batch([items[i] for i in batch], 16)
        value = hand_loss(reference(inputs), targets, mask, s)
        losses.append(value.item())
        grads.append(dict(zip(lora, torch.autograd.grad(value, list(lora.values())))))
    for name, p in lora.items():
        g1, g2 = grads[0][name].double(), grads[1][name].double()
        m = b1 * (1 - b1) * g1 + (1 - b1) * g2
        v = b2 * (1 - b2) * g1 * g1 + (1 - b2) * g2 * g2
        step = lr * math.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
        want = p.detach().double() - step * m / (v.sqrt() + eps)
        want = want - lr * wd * want
        got = dict(model.named_parameters())[name].detach().double()
        assert not torch.allclose(got, p.detach().double())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r["lr"] for r in steps] == pytest.approx([0.0, lr])
    assert [r["loss"] for r in steps] == pytest.approx(losses, rel=1e-5)
    assert any("valid_loss" in r for r in records)


def test_bf16_objective_with_stored_frozen_matrices_equals_plain_autocast():
    """store_frozen_matrices keeps bf16 copies of the frozen matrices and a padded head: same loss as casting
    at every use under autocast."""
    from conftest import tiny_model
    from loranlg.lora import mark_only_lora_trainable
    from loranlg.loss import LMObjective
    from loranlg.precision import store_frozen_matrices

    model = tiny_model(vocab_size=97, lora_dim=2, lora_alpha=4)
    mark_only_lora_trainable(model)
    ids = torch.randint(0, 97, (2, 7))
    mask = torch.zeros(2, 7)
    mask[:, 3:6] = 1
    plain = LMObjective(model, "bf16")(ids, ids.roll(-1, 1), *loss_positions(mask), 0.1)
    stored = LMObjective(model, "bf16", store_frozen_matrices(model, torch.bfloat16))
    assert stored.head_weight().shape[0] == 128 and model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    torch.testing.assert_close(stored(ids, ids.roll(-1, 1), *loss_positions(mask), 0.1), plain, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.slow
def test_capturable_adam_equals_eager_adam():
    """The CUDA-graph path's optimizer (step count and rate in tensors), also with its update compiled (one
    compilation serves every step: the rate and the step count are tensors), makes the eager optimizer's
    updates."""
    from loranlg.optim import AdamW, Schedule

    torch.manual_seed(3)
    start = [torch.randn(4, 3), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(6)]
    results = []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for capturable, compiled in ((False, False), (True, False), (True, True)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, correct_bias=True,
                    capturable=capturable)
        if compiled:
            opt.compile_update(SpeedOptions().compile_options())  # as gpt2_ft.py compiles it
        schedule = Schedule(opt, "linear", warmup=2, max_step=6)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
            schedule.step()
        results.append(params)
        if compiled:
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
            opt.uncompile_update()
    for eager, captured, compiled, initial in zip(*results, start):
        assert (eager.detach() - initial).abs().max() > 1e-3  # the updates did something
        torch.testing.assert_close(captured.detach(), eager.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(compiled.detach(), eager.detach(), rtol=1e-6, atol=1e-7)


def test_compile_options_leave_out_what_this_inductor_does_not_know():
    """An option that an older PyTorch lacks must not make torch.compile fail (and the run fall back to no
    compilation at all): it is dropped, the others are kept."""
    speed = SpeedOptions(inductor_options={"combo_kernels": True, "no_such_inductor_option": 1})
    assert speed.compile_options() == {"combo_kernels": True}


def test_optimizer_state_moves_between_eager_and_capturable_modes():
    """A resume file written in one mode continues in the other: the step count keeps its value and, for the
    capturable mode, lives beside the parameters."""
    from loranlg.optim import AdamW

    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 0.5)
    eager = AdamW([param], lr=1e-2)
    eager.step()
    eager.step()
    captured = AdamW([param], lr=1e-2, capturable=True)
    captured.load_state_dict(eager.state_dict())
    step = captured.state[param]["step"]
    assert torch.is_tensor(step) and step.device == param.device and step.item() == 2
    back = AdamW([param], lr=1e-2)
    back.load_state_dict(captured.state_dict())
    assert back.state[param]["step"] == 2 and isinstance(back.state[param]["step"], int)
