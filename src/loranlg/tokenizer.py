"""GPT-2 byte-level BPE through the `tokenizers` library, read from local vocabulary files.

Encoding treats every string as text: "<|endoftext|>" inside a string is split into ordinary BPE pieces,
exactly as the original pipeline's encoder does (it has no special tokens); id 50256 is only ever added
explicitly (--add_bos / --add_eos).
"""

import json
import os

from .errors import InputError

EOT_ID = 50256  # <|endoftext|>
DOUBLE_NEWLINE_ID = 628  # "\n\n"

# The original's file names first, then the hub's.
VOCAB_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


def find_vocab_files(vocab_dir):
    """Return (vocab_json, merges) paths in `vocab_dir`, or raise an InputError naming what is missing."""
    if not os.path.isdir(vocab_dir):
        raise InputError("vocabulary directory not found (expected encoder.json + vocab.bpe, "
                         "or vocab.json + merges.txt)", vocab_dir)
    for vocab_name, merges_name in VOCAB_FILE_PAIRS:
        vocab = os.path.join(vocab_dir, vocab_name)
        merges = os.path.join(vocab_dir, merges_name)
        if os.path.isfile(vocab) and os.path.isfile(merges):
            return vocab, merges
    raise InputError("no GPT-2 vocabulary here: expected encoder.json + vocab.bpe (or vocab.json + "
                     "merges.txt); scripts/download_pretrained_checkpoints.sh fetches them", vocab_dir)


def _bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class GPT2BPE:
    def __init__(self, vocab_dir):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        vocab_path, merges_path = find_vocab_files(vocab_dir)
        try:
            bpe = models.BPE.from_file(vocab_path, merges_path)
        except Exception as err:  # the library's message names the problem; add the files
            raise InputError(f"cannot read the BPE vocabulary ({err})", vocab_dir) from None
        self._tok = Tokenizer(bpe)
        self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok.decoder = decoders.ByteLevel()
        with open(vocab_path, encoding="utf-8") as handle:
            encoder = json.load(handle)
        self._id_to_token = {index: token for token, index in encoder.items()}
        self._byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        self.vocab_size = len(encoder)

    def encode(self, text):
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [enc.ids for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        # Bytes first, then UTF-8 with errors="replace": the original decoder's exact behaviour on ids that
        # cut a multi-byte character (the library's lossy decoding may count replacement characters differently).
        pieces = []
        for index in ids:
            token = self._id_to_token.get(int(index))
            if token is None:
                raise ValueError(f"token id {index} is outside the vocabulary (0..{self.vocab_size - 1})")
            pieces.append(token)
        return bytes(self._byte_of[char] for char in "".join(pieces)).decode("utf-8", errors="replace")
