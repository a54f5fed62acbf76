"""Beam search's graphed decode steps (beam_graph.py) on the CPU, through graph_emulation.py: captured once
per key width, replayed at later steps, they must give the reference's outputs. tests/test_gpu.py runs the
same search with real CUDA graphs."""

import pytest
import torch

from graph_emulation import EmulatedGraphs
from loranlg import kv_cache
from loranlg.beam import BeamSettings, beam_search
from loranlg.beam_graph import GraphedDecode
from test_beam import CASES, reference_beam, reference_case


def graphed_search(model, contexts, s, early_stop=True):
    decode = GraphedDecode(model, EmulatedGraphs())
    return beam_search(model, contexts, s, early_stop=early_stop, decode=decode), decode


def test_the_emulation_keeps_host_numbers_and_reads_tensors_anew():
    """What the tests below rely on: a replay sees new tensor contents, not new host values."""
    x, host = torch.tensor([1.0, 2.0]), {"scale": 3.0}
    graph, out = EmulatedGraphs().capture(lambda: (x * host["scale"]).sum().view(1) + x[:1])
    x.copy_(torch.tensor([10.0, 20.0]))
    host["scale"] = 100.0
    graph.replay()
    assert out.tolist() == [(10 + 20) * 3 + 10]
    with pytest.raises(RuntimeError, match="read on the host"):
        EmulatedGraphs().capture(lambda: x * float(x[0]))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_graphed_steps_match_reference(case, monkeypatch):
    # Key widths in blocks of 8 slots: these small cases then change width every few steps, and each width
    # is captured once and replayed.
    monkeypatch.setattr(kv_cache, "KEY_BLOCK", 8)
    s, model, contexts = reference_case(case)
    expected = [reference_beam(model, c, s) for c in contexts]
    got, decode = graphed_search(model, contexts, s)
    assert got == expected
    assert decode.captures > 0
    got, decode = graphed_search(model, contexts, s, early_stop=False)
    assert got == expected
    assert decode.replays >= decode.captures > 0


class StepLog(GraphedDecode):
    """GraphedDecode that notes each step as (key width, contexts in the cache, how it ran: "replay",
    "capture" (eager, then captured) or "eager")."""

    def __init__(self, model):
        super().__init__(model, EmulatedGraphs())
        self.log = []

    def __call__(self, tokens, cache):
        width, replays, captures = cache.width_at(cache.steps), self.replays, self.captures
        logits = super().__call__(tokens, cache)
        how = "replay" if self.replays > replays else "capture" if self.captures > captures else "eager"
        self.log.append((width, cache.contexts, how))
        return logits


def test_finished_contexts_leave_the_batch_only_when_a_new_graph_is_due(monkeypatch):
    """Dropping contexts discards the cache's graphs, so with graphs it waits for the next key width: once a
    width has a graph, every later step at that width replays it. Contexts do leave the batches, and the
    outputs stay the reference's."""
    monkeypatch.setattr(kv_cache, "KEY_BLOCK", 8)
    shrunk = 0
    for case in range(len(CASES)):
        s, model, contexts = reference_case(case)
        decode = StepLog(model)
        assert beam_search(model, contexts, s, decode=decode) == [reference_beam(model, c, s) for c in contexts]
        for step, (width, _, how) in enumerate(decode.log):
            if any(w == width and h != "eager" for w, _, h in decode.log[:step]):
                assert how == "replay", (case, step, decode.log)
        shrunk += sum(count < len(contexts) for _, count, _ in decode.log)
    assert shrunk > 0  # some contexts left a batch while graphs were in use


def test_a_step_that_reads_the_step_on_the_host_is_caught(monkeypatch):
    """The check above can fail: a cache that computes the write slots from its host-side step count (frozen
    into each graph at its capture) gives other outputs than the reference."""
    monkeypatch.setattr(kv_cache, "KEY_BLOCK", 8)
    prepare = kv_cache.BeamCache.prepare_step

    def host_step_slots(cache):
        positions = prepare(cache)
        cache.write_slots = cache.prompt_len + cache.steps * cache.beams + cache.places
        return positions

    monkeypatch.setattr(kv_cache.BeamCache, "prepare_step", host_step_slots)
    s, model, contexts = reference_case(0)
    expected = [reference_beam(model, c, s) for c in contexts]
    assert beam_search(model, contexts, s) == expected  # eager steps recompute it every step: still right
    got, decode = graphed_search(model, contexts, s)
    assert decode.replays > 0 and got != expected


def test_graphed_steps_equal_eager_steps_with_a_padded_head_in_bf16():
    """gpt2_beam.py's setting: bf16, the head padded with -inf logits, top-k in chunks over 50,304 columns,
    beam 10 over several key widths of 64 slots. Replays run the eager step's operations: same outputs."""
    from conftest import tiny_model

    model = tiny_model(3, vocab_size=50257, n_positions=1024).to(torch.bfloat16)
    model.pad_head_for_inference()
    gen = torch.Generator().manual_seed(3)
    contexts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (5, 40, 17)]
    s = BeamSettings(beam=10, eval_len=24, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    got, decode = graphed_search(model, contexts, s)
    assert got == beam_search(model, contexts, s)
    assert decode.replays > decode.captures > 1
