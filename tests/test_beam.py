"""Beam search: the fast batched path against a plain reference of SPEC 6 (one context at a time, no cache,
the whole sequence recomputed each step, the original's loops), and the command's file handling."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_script, tiny_model
from gpt2_beam import distinct_batches
from loranlg.beam import BeamSettings, process_logits, top_log_probs
from loranlg.beam import beam_search as search_with_decoder
from loranlg.decoder import Decoder
from loranlg.model import build_model

NEG_INF = float("-inf")


def beam_search(model, contexts, settings, **kwargs):
    """loranlg.beam.beam_search of a plain GPT2LMModel, or of a decoder.Decoder as given."""
    decoder = model if isinstance(model, Decoder) else Decoder(model)
    return search_with_decoder(decoder, contexts, settings, **kwargs)


# ---------------------------------------------------------------- the reference

def reference_processing(logits, history, step, s):
    """SPEC 6's logit processing for one beam, with Python loops as the original writes it."""
    if history is not None and s.repetition_penalty != 1.0:
        for token in set(history):
            if logits[token] < 0:
                logits[token] *= s.repetition_penalty
            else:
                logits[token] /= s.repetition_penalty
    if step < s.min_length:
        for eos in s.eos_ids:
            logits[eos] = NEG_INF
    n = s.no_repeat_ngram_size
    if history is not None and n > 0 and step + 1 >= n:
        followers = {}
        for start in range(len(history) - n + 1):
            followers.setdefault(tuple(history[start:start + n - 1]), []).append(history[start + n - 1])
        for token in followers.get(tuple(history[step - n + 1:step]), []):
            logits[token] = NEG_INF
    return torch.log(torch.softmax(logits, dim=-1))


@torch.no_grad()
def reference_beam(model, context, s):
    vocab = model.config.vocab_size
    best = {"score": None, "ids": [0] * s.eval_len}

    def consider(score, ids):
        score = score / len(ids) ** s.length_penalty
        if best["score"] is None or best["score"] < score:
            best["score"] = score
            best["ids"][:len(ids)] = ids

    logits = model(torch.tensor([context]))[0, -1].clone()
    logp = reference_processing(logits, None, 0, s)
    top, tokens = torch.topk(logp[None], s.beam, dim=1, largest=True, sorted=True)
    scores, histories = top[0].clone(), [[int(t)] for t in tokens[0]]
    for step in range(s.eval_len):
        if step > 0:
            last = model(torch.tensor([context + h for h in histories]))[:, -1]
            rows = [scores[b] + reference_processing(last[b].clone(), histories[b], step, s)
                    for b in range(s.beam)]
            top, flat = torch.topk(torch.cat(rows)[None], s.beam, dim=1, largest=True, sorted=True)
            scores = top[0].clone()
            histories = [histories[int(i) // vocab] + [int(i) % vocab] for i in flat[0]]
        for b in range(s.beam):
            if histories[b][-1] in s.eos_ids:
                consider(scores[b], histories[b])
                scores[b] = NEG_INF
    for b in range(s.beam):
        consider(scores[b], histories[b])
    return best["ids"]


# ---------------------------------------------------------------- models and data

VOCAB = 61


def peaked_model(seed, eos_ids, eos_bias):
    """A float64 tiny GPT-2 whose logits are peaked and whose EOS ids get a bias, so that beams end early."""
    model = tiny_model(seed, vocab_size=VOCAB).double()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(12.0)
        wte = model.transformer.wte.weight
        for eos in eos_ids:
            model.transformer.ln_f.bias.add_(eos_bias * wte[eos] / wte[eos].dot(wte[eos]))
    return model


def random_contexts(seed, count, low=2, high=14):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=gen).tolist()
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]


CASES = [
    # beam, length_penalty, eos ids, no_repeat, repetition_penalty, min_length, eval_len, eos bias
    (4, 0.8, (5,), 4, 1.0, 0, 14, 1.0),
    (1, 1.0, (5,), 0, 1.0, 0, 10, 1.0),
    (5, 0.0, (5, 9), 2, 1.3, 3, 12, 1.0),
    (3, 1.5, (7,), 1, 0.7, 0, 12, 0.0),
    (6, 0.9, (5, 60), 3, 1.0, 5, 16, 1.2),
    (2, -0.5, (11,), 2, 1.2, 2, 10, 1.0),
    # Long eval_len and hypotheses that end early: the early stop (read two steps late) has room.
    (4, 1.0, (5, 9), 2, 1.0, 0, 24, 8.0),
    (3, 0.0, (5,), 3, 1.0, 0, 30, 6.0),
]


def reference_case(case):
    """CASES[case] as (settings, its peaked model, 7 random contexts)."""
    beam, penalty, eos_ids, ngram, repetition, min_length, eval_len, bias = CASES[case]
    s = BeamSettings(beam=beam, eval_len=eval_len, length_penalty=penalty, no_repeat_ngram_size=ngram,
                     repetition_penalty=repetition, min_length=min_length, eos_ids=eos_ids)
    return s, peaked_model(case, eos_ids, bias), random_contexts(case, 7)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_fast_path_matches_reference(case):
    s, model, contexts = reference_case(case)
    expected = [reference_beam(model, c, s) for c in contexts]
    assert all(len(ids) == s.eval_len for ids in expected)
    for batch_size in (1, 3, 7):
        got = []
        for start in range(0, len(contexts), batch_size):
            got += beam_search(model, contexts[start:start + batch_size], s)
        assert got == expected, f"batch size {batch_size}"
    # Without early stopping the loop runs all eval_len steps: the same result.
    assert beam_search(model, contexts, s, early_stop=False) == expected


def test_cases_end_early_and_stop_early():
    """The cases above exercise what they claim: hypotheses that end before eval_len, the early stop."""
    ended, stopped = 0, 0
    for case in range(len(CASES)):
        s, model, contexts = reference_case(case)
        stats = {}
        outputs = beam_search(model, contexts, s, stats=stats)
        for ids in outputs:
            last = max(i for i, t in enumerate(ids) if t != 0) if any(ids) else -1
            if 0 <= last < s.eval_len - 1 and ids[last] in s.eos_ids:
                ended += 1
                assert last + 1 >= s.min_length
        stopped += stats["context_steps"] < len(contexts) * s.eval_len
    assert ended >= 10
    assert stopped >= 3


def test_top_log_probs_are_the_best_of_log_softmax():
    s = BeamSettings(beam=5, no_repeat_ngram_size=2, repetition_penalty=1.3, eos_ids=(2,), min_length=3)
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 61, generator=gen, dtype=torch.float64)
    history = torch.randint(0, 61, (6, 4), generator=gen)
    logp, ids = top_log_probs(logits.clone(), history, s, torch.float64, 5)
    full = torch.log(torch.softmax(process_logits(logits.clone(), history, s), dim=-1))
    expected, expected_ids = torch.topk(full, 5, dim=1)
    # log of 5 gathered values and of a whole row run through different vector paths: equal to rounding
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(logp, expected, rtol=1e-12, atol=1e-12)


def test_padded_head_matches_reference():
    """gpt2_beam.py's model has a head padded to a multiple of 64 (with -inf logits past the vocabulary):
    here 61 tokens padded to 64."""
    s = BeamSettings(beam=4, eval_len=12, length_penalty=0.8, no_repeat_ngram_size=3, eos_ids=(5,))
    model = peaked_model(11, (5,), 1.0)
    contexts = random_contexts(11, 5)
    expected = [reference_beam(model, c, s) for c in contexts]
    decoder = Decoder(model, pad_head=True)
    assert decoder.logits(torch.zeros(1, model.config.n_embd, dtype=torch.float64)).shape[-1] == 64
    assert beam_search(decoder, contexts, s) == expected


def test_ngram_ban_by_hand():
    s = BeamSettings(no_repeat_ngram_size=3, eos_ids=())
    history = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 1, 4], [2, 2, 2, 2, 2]])
    logits = process_logits(torch.zeros(3, 6), history, s)
    # row 0: (1, 2) was followed by 3; row 1: (1, 4) never seen; row 2: (2, 2) was followed by 2.
    assert logits[0].tolist() == [0, 0, 0, NEG_INF, 0, 0]
    assert logits[1].tolist() == [0] * 6
    assert logits[2].tolist() == [0, 0, NEG_INF, 0, 0, 0]


def test_repetition_penalty_and_min_length_by_hand():
    s = BeamSettings(repetition_penalty=2.0, no_repeat_ngram_size=0, min_length=4, eos_ids=(4,))
    logits = process_logits(torch.tensor([[1.0, -1.0, 3.0, -2.0, 5.0]]), torch.tensor([[0, 1, 1]]), s)
    assert logits[0].tolist() == [0.5, -2.0, 3.0, -2.0, NEG_INF]


def test_distinct_batches_cover_every_context_once():
    contexts = [(1, 2), (3,), (1, 2), (4, 5, 6), (3,), (7,)]
    split = [distinct_batches(contexts, 2, rank, 2) for rank in (0, 1)]
    seen = [c for batches in split for batch in batches for c in batch]
    assert sorted(seen) == sorted(set(contexts))
    assert all(len(batch) <= 2 for batches in split for batch in batches)


# ---------------------------------------------------------------- the command

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """gpt2.tiny (the real 50,257-token vocabulary), peaked, saved as a full state dict."""
    torch.manual_seed(3)
    model = build_model("gpt2.tiny")
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


BEAM_FLAGS = ["--model_card", "gpt2.tiny", "--beam", "3", "--eval_len", "6", "--seq_len", "16",
              "--length_penalty", "0.8", "--no_repeat_ngram_size", "2", "--eos_token_id", "628"]


def test_two_processes_write_every_line_in_order(tmp_path, tiny_checkpoint):
    checkpoint, model = tiny_checkpoint
    gen = torch.Generator().manual_seed(5)
    distinct = [torch.randint(0, 50257, (n,), generator=gen).tolist() + [50256] for n in (3, 7, 5, 12, 4)]
    lines = [distinct[i] for i in (0, 1, 0, 2, 3, 4, 1, 3, 0)]  # 9 lines over 5 contexts, one over 10 tokens
    data = tmp_path / "test.jsonl"
    write_jsonl(data, [{"context": c, "completion": [1, 50256]} for c in lines])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(REPO / "src" / "gpt2_beam.py")]
    args = ["--data", data, "--init_checkpoint", checkpoint, "--work_dir", tmp_path / "out",
            "--batch_size", "2", "--device", "cpu"] + BEAM_FLAGS
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(torchrun + [str(a) for a in args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keep only their last tokens" in done.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "beam_prediction.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == list(range(len(lines)))
    assert all(set(r) == {"id", "predict"} and len(r["predict"]) == 6 for r in records)
    s = BeamSettings(beam=3, eval_len=6, length_penalty=0.8, no_repeat_ngram_size=2, eos_ids=(50256, 628))
    for record, context in zip(records, lines):
        assert record["predict"] == reference_beam(model, context[-10:], s)


def test_errors_are_clear(tmp_path, tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    done = run_script("gpt2_beam.py", "--data", empty, "--init_checkpoint", checkpoint,
                      "--work_dir", tmp_path, "--device", "cpu", *BEAM_FLAGS)
    assert done.returncode == 2 and "empty" in done.stderr and str(empty) in done.stderr

    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"context": [1, 2]}, {"context": "name : x"}])
    done = run_script("gpt2_beam.py", "--data", bad, "--init_checkpoint", checkpoint,
                      "--work_dir", tmp_path, "--device", "cpu", *BEAM_FLAGS)
    assert done.returncode == 2 and f"{bad}:2:" in done.stderr

    good = tmp_path / "good.jsonl"
    write_jsonl(good, [{"context": [1, 2, 50256]}])
    done = run_script("gpt2_beam.py", "--data", good, "--init_checkpoint", checkpoint, "--model_card", "gpt2.mini",
                      "--work_dir", tmp_path, "--device", "cpu")
    assert done.returncode == 2 and str(checkpoint) in done.stderr and "gpt2.tiny" in done.stderr
    assert not (tmp_path / "beam_prediction.jsonl").exists()


def test_one_process_matches_the_reference(tmp_path, tiny_checkpoint):
    checkpoint, model = tiny_checkpoint
    gen = torch.Generator().manual_seed(8)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() + [50256] for n in (4, 9)]
    data = tmp_path / "test.jsonl"
    write_jsonl(data, [{"context": c} for c in contexts])
    done = run_script("gpt2_beam.py", "--data", data, "--init_checkpoint", checkpoint, "--work_dir", tmp_path,
                      "--device", "cpu", *BEAM_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    got = [json.loads(line)["predict"] for line in (tmp_path / "beam_prediction.jsonl").read_text().splitlines()]
    s = BeamSettings(beam=3, eval_len=6, length_penalty=0.8, no_repeat_ngram_size=2, eos_ids=(50256, 628))
    assert got == [reference_beam(model, c, s) for c in contexts]


def test_lora_checkpoint_is_applied(tmp_path):
    """A full checkpoint with LoRA tensors decodes like the unmerged LoRA model (the command merges it)."""
    torch.manual_seed(4)
    model = build_model("gpt2.tiny", lora_dim=2, lora_alpha=8).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(20.0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    torch.save(model.state_dict(), tmp_path / "lora.pt")
    gen = torch.Generator().manual_seed(6)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() + [50256] for n in (4, 9, 6)]
    data = tmp_path / "test.jsonl"
    write_jsonl(data, [{"context": c} for c in contexts])
    done = run_script("gpt2_beam.py", "--data", data, "--init_checkpoint", tmp_path / "lora.pt", "--lora_dim", 2,
                      "--lora_alpha", 8, "--work_dir", tmp_path, "--device", "cpu", "--batch_size", 3,
                      *BEAM_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    got = [json.loads(line)["predict"] for line in (tmp_path / "beam_prediction.jsonl").read_text().splitlines()]
    s = BeamSettings(beam=3, eval_len=6, length_penalty=0.8, no_repeat_ngram_size=2, eos_ids=(50256, 628))
    assert got == [reference_beam(model, c, s) for c in contexts]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    assert got != [reference_beam(model, c, s) for c in contexts]  # the LoRA tensors matter here


def test_auto_batch_size_and_timing(tmp_path, tiny_checkpoint):
    """--batch_size auto on the CPU takes every context here (at most 16), with the reference's outputs;
    --timing prints a table whose parts add up to its total."""
    checkpoint, model = tiny_checkpoint
    gen = torch.Generator().manual_seed(9)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() + [50256] for n in (4, 9, 6)]
    data = tmp_path / "test.jsonl"
    write_jsonl(data, [{"context": c} for c in contexts + contexts[:1]])
    done = run_script("gpt2_beam.py", "--data", data, "--init_checkpoint", checkpoint, "--work_dir", tmp_path,
                      "--device", "cpu", "--batch_size", "auto", "--timing", *BEAM_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--batch_size auto: 3 contexts a batch" in done.stderr
    got = [json.loads(line)["predict"] for line in (tmp_path / "beam_prediction.jsonl").read_text().splitlines()]
    s = BeamSettings(beam=3, eval_len=6, length_penalty=0.8, no_repeat_ngram_size=2, eos_ids=(50256, 628))
    assert got == [reference_beam(model, c, s) for c in contexts + contexts[:1]]
    rows = {}
    for line in done.stderr.splitlines():
        if line.startswith("timing: ") and not line.startswith("timing: part"):
            name, host, gpu, count = line[len("timing: "):].rsplit(None, 3)
            rows[name.strip()] = (float(host), gpu, int(count))
    for part in ("import torch, loranlg", "build model", "read weights into the model",
                 "search: cache, prefill, step 0", "search: decode steps, model", "write output"):
        assert part in rows, part
    assert 1 <= rows["search: decode steps, model"][2] <= 5  # one batch: steps 1 .. eval_len - 1 at most
    parts = sum(host for name, (host, _, _) in rows.items() if name != "total")
    assert abs(parts - rows["total"][0]) < 0.01 * len(rows)
