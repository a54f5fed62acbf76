"""Our GPT-2 against transformers' GPT2LMHeadModel holding the same weights: full passes, padded batches,
prefill + decode with the key/value cache (decoder.py), and beam reordering of the cache; and the fast paths
(a packed batch, the cache) against the reference forward, model(ids)."""

import pytest
import torch
from conftest import tiny_config
from hf_oracle import hub_logits, hub_twin, randomize

from loranlg import data
from loranlg.decoder import Decoder
from loranlg.model import CARDS, GPT2Config, GPT2LMModel
from loranlg.packed_attention import PackedAttention

TOLERANCE = 1e-4


def make_pair(seed=0, **overrides):
    torch.manual_seed(seed)
    model = randomize(GPT2LMModel(tiny_config(**overrides)).eval(), seed)
    return model, hub_twin(model)


def make_decoder_pair(seed):
    model, twin = make_pair(seed)
    return Decoder(model), twin


def right_padded(sequences, pad=0):
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.as_tensor(seq)
    return ids, torch.tensor([len(s) for s in sequences])


def random_sequences(lengths, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def assert_close(ours, reference):
    difference = (ours - reference).abs().max().item()
    assert difference < TOLERANCE, f"max abs difference {difference:.3g}"


def test_cards_match_the_spec_table():
    assert {name: (c["n_embd"], c["n_layer"], c["n_head"]) for name, c in CARDS.items()
            if name in ("gpt2.sm", "gpt2.md", "gpt2.lg")} == {
        "gpt2.sm": (768, 12, 12), "gpt2.md": (1024, 24, 16), "gpt2.lg": (1280, 36, 20)}
    config = GPT2Config.from_card("gpt2.md")
    assert (config.vocab_size, config.n_positions, config.layer_norm_epsilon) == (50257, 1024, 1e-5)
    with pytest.raises(ValueError, match="gpt2.xl"):
        GPT2Config.from_card("gpt2.xl")


def test_parameter_counts_match_the_published_sizes():
    with torch.device("meta"):
        sizes = {card: sum(p.numel() for p in GPT2LMModel(GPT2Config.from_card(card)).parameters())
                 for card in ("gpt2.sm", "gpt2.md", "gpt2.lg")}
    # The hub's sizes (tied head counted once): 124,439,808 / 354,823,168 / 774,030,080.
    assert sizes == {"gpt2.sm": 124_439_808, "gpt2.md": 354_823_168, "gpt2.lg": 774_030_080}


def test_full_pass_equals_transformers_for_each_sequence_of_a_padded_batch():
    model, twin = make_pair()
    sequences = random_sequences([7, 12, 3, 12], model.config.vocab_size, seed=1)
    ids, lengths = right_padded(sequences, pad=5)
    with torch.no_grad():
        logits = model(ids)
    for row, seq in enumerate(sequences):
        assert_close(logits[row, :len(seq)], hub_logits(twin, seq))


def test_padding_content_does_not_change_real_positions():
    model, _ = make_pair(seed=3)
    sequences = random_sequences([4, 9], model.config.vocab_size, seed=2)
    with torch.no_grad():
        a = model(right_padded(sequences, pad=0)[0])
        b = model(right_padded(sequences, pad=42)[0])
        alone = model(torch.tensor([sequences[0]]))
    assert torch.equal(a[0, :4], b[0, :4])
    assert_close(a[0, :4], alone[0])


def test_full_vocabulary_card_equals_transformers():
    torch.manual_seed(0)
    model = randomize(GPT2LMModel(GPT2Config.from_card("gpt2.tiny", n_positions=64)).eval(), scale=0.1)
    twin = hub_twin(model)
    sequence = [50256, 628, 464, 3290, 318, 257, 50255, 11]
    with torch.no_grad():
        logits = model(torch.tensor([sequence]))[0]
    assert logits.shape == (len(sequence), 50257)
    assert_close(logits, hub_logits(twin, sequence))


def test_prefill_and_decode_equal_transformers_on_the_whole_sequence():
    decoder, twin = make_decoder_pair(seed=4)
    vocab = decoder.config.vocab_size
    contexts = random_sequences([5, 11, 2], vocab, seed=5)
    steps = random_sequences([4, 4, 4], vocab, seed=6)
    ids, lengths = right_padded(contexts, pad=7)
    cache = decoder.new_cache(contexts=3, beams=1, prompt_len=ids.shape[1], steps=4)
    with torch.no_grad():
        logits = decoder.prefill(ids, lengths, cache)
        for row, context in enumerate(contexts):
            assert_close(logits[row], hub_logits(twin, context)[-1])
        for step in range(4):
            tokens = torch.tensor([[s[step]] for s in steps])
            logits = decoder.decode_step(tokens, cache)
            assert logits.shape == (3, 1, vocab)
            for row, context in enumerate(contexts):
                assert_close(logits[row, 0], hub_logits(twin, context + steps[row][:step + 1])[-1])
        with pytest.raises(ValueError, match="all are used"):
            decoder.decode_step(tokens, cache)


def test_beams_that_reorder_see_only_their_own_history():
    """Beams swap and duplicate as the search keeps its best; each beam's logits stay those of its own
    context + generated tokens, though no key moves in the cache."""
    decoder, twin = make_decoder_pair(seed=7)
    vocab = decoder.config.vocab_size
    contexts = random_sequences([6, 3], vocab, seed=8)
    ids, lengths = right_padded(contexts)
    cache = decoder.new_cache(contexts=2, beams=3, prompt_len=ids.shape[1], steps=4)
    history = [[list(c) for _ in range(3)] for c in contexts]
    generator = torch.Generator().manual_seed(9)
    parents = [torch.tensor([[2, 0, 0], [2, 0, 1]]), torch.tensor([[1, 1, 2], [0, 0, 0]]),
               torch.tensor([[0, 2, 1], [2, 1, 0]])]
    with torch.no_grad():
        decoder.prefill(ids, lengths, cache)
        for step in range(4):
            tokens = torch.randint(0, vocab, (2, 3), generator=generator)
            logits = decoder.decode_step(tokens, cache)
            for n in range(2):
                for b in range(3):
                    history[n][b].append(int(tokens[n, b]))
                    assert_close(logits[n, b], hub_logits(twin, history[n][b])[-1])
            if step < len(parents):
                cache.reorder_beams(parents[step])
                history = [[list(history[n][p]) for p in parents[step][n].tolist()] for n in range(2)]


def test_dropping_a_context_keeps_the_others_beams():
    decoder, twin = make_decoder_pair(seed=15)
    vocab = decoder.config.vocab_size
    contexts = random_sequences([4, 7, 2], vocab, seed=16)
    ids, lengths = right_padded(contexts)
    cache = decoder.new_cache(contexts=3, beams=2, prompt_len=ids.shape[1], steps=3)
    history = [[list(c), list(c)] for c in contexts]
    with torch.no_grad():
        decoder.prefill(ids, lengths, cache)
        for step, tokens in enumerate([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]]):
            decoder.decode_step(torch.tensor(tokens), cache)
            for n in range(3):
                for b in range(2):
                    history[n][b].append(tokens[n][b])
            cache.reorder_beams(torch.tensor([[1, 1], [0, 1], [1, 0]]))
            history = [[list(history[n][p]) for p in parents] for n, parents in enumerate([[1, 1], [0, 1], [1, 0]])]
        cache.keep(torch.tensor([2, 0]))
        logits = decoder.decode_step(torch.tensor([[13, 14], [15, 16]]), cache)
        for row, n in enumerate([2, 0]):
            for b in range(2):
                expected = hub_logits(twin, history[n][b] + [[13, 14], [15, 16]][row][b:b + 1])[-1]
                assert_close(logits[row, b], expected)


def test_prefill_of_a_padded_batch_equals_each_context_alone():
    decoder, _ = make_decoder_pair(seed=10)
    contexts = random_sequences([8, 1, 5], decoder.config.vocab_size, seed=11)
    ids, lengths = right_padded(contexts, pad=3)
    with torch.no_grad():
        batch_cache = decoder.new_cache(3, 1, ids.shape[1], 2)
        batched = decoder.prefill(ids, lengths, batch_cache)
        step = decoder.decode_step(torch.tensor([[1], [2], [3]]), batch_cache)
        for row, context in enumerate(contexts):
            cache = decoder.new_cache(1, 1, len(context), 2)
            alone = decoder.prefill(torch.tensor([context]), torch.tensor([len(context)]), cache)
            assert_close(batched[row], alone[0])
            assert_close(step[row], decoder.decode_step(torch.tensor([[row + 1]]), cache)[0])


def test_decode_under_a_lower_precision_cache():
    """Generation under autocast or a bf16 cache must not trip on dtypes; results stay near fp32's."""
    decoder, _ = make_decoder_pair(seed=12)
    contexts = random_sequences([4, 6], decoder.config.vocab_size, seed=13)
    ids, lengths = right_padded(contexts)
    with torch.no_grad():
        exact_cache = decoder.new_cache(2, 2, ids.shape[1], 1)
        decoder.prefill(ids, lengths, exact_cache)
        exact = decoder.decode_step(torch.tensor([[1, 2], [3, 4]]), exact_cache)
        low_cache = decoder.new_cache(2, 2, ids.shape[1], 1, dtype=torch.bfloat16)
        decoder.prefill(ids, lengths, low_cache)
        low = decoder.decode_step(torch.tensor([[1, 2], [3, 4]]), low_cache)
    assert low.dtype == torch.float32
    assert (low - exact).abs().max() < 0.1 * exact.abs().max()


def test_no_dropout_outside_lora():
    model, _ = make_pair(seed=14, lora_dim=4, lora_dropout=0.0)
    model.train()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))


def test_padded_inference_head_gives_the_same_logits():
    from conftest import tiny_model
    model = tiny_model(vocab_size=97)
    ids = torch.randint(0, 97, (3, 9))
    expected = model(ids)
    decoder = Decoder(model, pad_head=True)
    assert decoder.head.shape[0] % 64 == 0 and decoder.head.shape[0] >= 97
    got = decoder.logits(model.hidden_states(ids))
    assert got.shape[-1] == decoder.head.shape[0] and (got[..., 97:] == float("-inf")).all()
    torch.testing.assert_close(got[..., :97], expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the fast paths against the reference

def test_packed_batch_equals_the_reference_forward():
    """The training step's layout (examples end to end in one row, attention through PackedAttention) gives
    each example the hidden states of the reference forward over the right-padded batch, in its gradients
    too."""
    model, _ = make_pair(seed=20, lora_dim=2, lora_alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    sequences = random_sequences([7, 12, 3, 9], model.config.vocab_size, seed=21)
    items = [(seq + [0], 1) for seq in sequences]  # token ids (one past the input), context length
    padded = data.collate(items, seq_len=64, length_multiple=16)  # the width pack_index counts slots in
    packed = data.collate_packed(items, seq_len=64, length_multiple=16, tokens_multiple=64)
    reference = model.hidden_states(padded["input"])
    fast = model.hidden_states(packed["input"], packed["position_ids"],
                               PackedAttention({k: packed[k] for k in data.PACKING_KEYS}))
    real = packed["pack_valid"].bool()
    torch.testing.assert_close(fast[0, real], reference.reshape(-1, reference.shape[-1])[packed["pack_index"][real]],
                               rtol=1e-5, atol=1e-5)
    assert not real.all()  # the row's padding was there, and is left out
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(reference.shape[-1])
    reference_real = reference.reshape(-1, reference.shape[-1])[packed["pack_index"][real]]
    reference_grads = torch.autograd.grad((reference_real @ weights).sum(), params)
    fast_grads = torch.autograd.grad((fast[0, real] @ weights).sum(), params)
    for a, b in zip(reference_grads, fast_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_decoder_equals_the_reference_forward():
    """prefill + decode_step through the key/value cache give the reference forward's last-position logits
    of each context + its tokens so far."""
    model, _ = make_pair(seed=22)
    decoder = Decoder(model)
    contexts = random_sequences([5, 9, 2], model.config.vocab_size, seed=23)
    ids, lengths = right_padded(contexts)
    cache = decoder.new_cache(contexts=3, beams=1, prompt_len=ids.shape[1], steps=3)
    with torch.no_grad():
        logits = decoder.prefill(ids, lengths, cache)
        for step in range(4):
            for row, context in enumerate(contexts):
                assert_close(logits[row].reshape(-1), model(torch.tensor([context]))[0, -1])
            if step == 3:
                break
            tokens = torch.tensor([[step + 3 * row] for row in range(3)])
            contexts = [c + [int(t)] for c, t in zip(contexts, tokens[:, 0])]
            logits = decoder.decode_step(tokens, cache)


def test_dropping_contexts_in_place_keeps_the_kept_rows():
    """cache.keep with rows in increasing order (beam search's drops) moves them within the cache: the same
    tensors as an index_select, for every subset of six contexts; other orders still copy."""
    import itertools

    from loranlg.kv_cache import BeamCache

    config = tiny_config()
    for count in range(1, 7):
        for kept in itertools.combinations(range(6), count):
            cache = BeamCache(config, contexts=6, beams=2, prompt_len=3, steps=4)
            cache.kv.copy_(torch.randn(cache.kv.shape))
            cache.lengths = torch.arange(6) + 1
            cache.ancestors = torch.randint(0, 2, cache.ancestors.shape)
            expected = [t[list(kept)].clone() for t in (cache.kv, cache.lengths, cache.ancestors)]
            storage = cache.kv.data_ptr()
            cache.keep(list(kept))
            assert cache.kv.data_ptr() == storage  # moved in place, no second cache
            for got, want in zip((cache.kv, cache.lengths, cache.ancestors), expected):
                assert torch.equal(got, want)
    cache = BeamCache(config, contexts=3, beams=1, prompt_len=2, steps=1)
    cache.kv.copy_(torch.randn(cache.kv.shape))
    expected = cache.kv[[2, 0]].clone()
    cache.keep([2, 0])
    assert torch.equal(cache.kv, expected)


def test_bytes_per_context_is_what_a_cache_holds():
    from loranlg.kv_cache import BeamCache

    config = tiny_config()
    for dtype in (torch.float32, torch.bfloat16):
        one, three = (BeamCache(config, n, beams=4, prompt_len=7, steps=9, dtype=dtype) for n in (1, 3))
        each = BeamCache.bytes_per_context(config, 4, 7, 9, dtype)
        assert each == one.kv.nbytes + one.ancestors.nbytes
        assert 3 * each == three.kv.nbytes + three.ancestors.nbytes
