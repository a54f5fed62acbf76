"""GPT-2 BPE: ids equal transformers' slow GPT2Tokenizer (a plain-Python port of OpenAI's encoder), text round-trips."""

import shutil

import pytest

from loranlg.errors import InputError
from loranlg.tokenizer import EOT_ID, GPT2BPE

AWKWARD = [
    "",
    " ",
    "café crème brûlée à la carte",
    "Price range: £20-25, or less than £20",
    "emoji 🍕🍝 and ZWJ 👩‍👩‍👧 family",
    "runs   of    spaces     and\ttabs\t\tand trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nafter a blank line\r\nwindows\n",
    "<|endoftext|>",
    "text before<|endoftext|>and after <|endoftext|>",
    "They're, it's, we'll, I'd, you've, I'm, can't; DON'T",
    "日本語のテキストと中文",
    "numbers 1234567 3.14159 -42 1e10",
    "Zürich Straße Ørsted ÆØÅ ñ ç",
    "control \x00\x01\x7f chars",
    "name : The Eagle | eatType : coffee shop | food : Japanese | priceRange : less than £20",
]


@pytest.fixture(scope="module")
def bpe(vocab_dir):
    return GPT2BPE(str(vocab_dir))


@pytest.fixture(scope="module")
def slow(vocab_dir):
    from transformers import GPT2Tokenizer
    # split_special_tokens: the original encoder has no special tokens, "<|endoftext|>" in text is plain text.
    return GPT2Tokenizer(str(vocab_dir / "encoder.json"), str(vocab_dir / "vocab.bpe"), split_special_tokens=True)


def _e2e_texts(path):
    """Every string the pipeline encodes from a raw E2E file: the MRs and the space-prefixed references."""
    contexts, completions = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        mr, text = line.strip().split("||")[:2]
        contexts.append(mr)
        completions.append(" " + text)
    return contexts + completions


@pytest.mark.parametrize("split, lines", [("valid", 4672), ("test", 4693)])
def test_ids_equal_slow_tokenizer_on_every_e2e_line(bpe, slow, shared_dir, split, lines):
    texts = _e2e_texts(shared_dir / "data" / "e2e" / f"{split}.txt")
    assert len(texts) == 2 * lines
    fast_ids = bpe.encode_batch(texts)
    for text, ids in zip(texts, fast_ids):
        assert ids == slow.encode(text), text


def test_first_valid_context_ids(bpe, shared_dir):
    first = (shared_dir / "data" / "e2e" / "valid.txt").read_text(encoding="utf-8").splitlines()[0]
    assert bpe.encode(first.split("||")[0])[:5] == [3672, 1058, 978, 3681, 388]


@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_strings_match_slow_tokenizer_and_round_trip(bpe, slow, text):
    ids = bpe.encode(text)
    assert ids == slow.encode(text)
    assert bpe.encode_batch([text]) == [ids]
    assert bpe.decode(ids) == text


def test_endoftext_in_text_is_not_the_special_id(bpe):
    ids = bpe.encode("<|endoftext|>")
    assert EOT_ID not in ids and len(ids) > 1
    assert bpe.decode([EOT_ID]) == "<|endoftext|>"


def test_special_ids(bpe):
    assert bpe.vocab_size == 50257
    assert bpe.encode("\n\n") == [628]


def test_decode_of_a_cut_multibyte_character_matches_slow_decoder(bpe, slow):
    ids = bpe.encode("\U0001d518")  # a 4-byte character with no token of its own
    assert len(ids) > 1
    assert bpe.decode(ids[:1]) == slow.decode(ids[:1])
    assert "\ufffd" in bpe.decode(ids[:1])


def test_hub_file_names_give_the_same_ids(vocab_dir, tmp_path, bpe):
    shutil.copy(vocab_dir / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(vocab_dir / "vocab.bpe", tmp_path / "merges.txt")
    hub = GPT2BPE(str(tmp_path))
    for text in AWKWARD:
        assert hub.encode(text) == bpe.encode(text)


def test_missing_vocabulary_is_a_located_error(tmp_path, vocab_dir):
    with pytest.raises(InputError) as err:
        GPT2BPE(str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value) and "encoder.json" in str(err.value)
    shutil.copy(vocab_dir / "encoder.json", tmp_path / "encoder.json")  # merges missing
    with pytest.raises(InputError) as err:
        GPT2BPE(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "vocab.bpe" in str(err.value)


def test_corrupt_vocabulary_is_a_located_error(tmp_path):
    (tmp_path / "encoder.json").write_text("{not json")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(InputError) as err:
        GPT2BPE(str(tmp_path))
    assert str(tmp_path) in str(err.value)
