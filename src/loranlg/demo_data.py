"""The offline demos' data: a WebNLG or DART dev split cut into train / valid / test parts.

Only the dev splits are at hand offline, so the demo trains a small model on part of one and scores the rest.
WebNLG's dev split holds only the 10 categories seen in training; to show the unseen / seen / all scores, the
demo keeps some categories out of its training part altogether and counts them as unseen (`cate` false).

  python -m loranlg.demo_data --task webnlg --source dev.json --out DIR [--contexts N] [--holdout H]
  python -m loranlg.demo_data --task dart --source dart-v1.1.1-full-dev.json --out DIR [--contexts N] [--holdout H]

writes DIR/{train,valid,test}.json (the source's own layout) and DIR/{train,valid,test}_formatted.jsonl (what
format_converting_<task>.py writes, with the demo's seen categories for WebNLG).
"""

import argparse
import json
import os
import sys

from . import flags
from .errors import InputError, run_cli
from .files import atomic_output
from .formats import _load_json, dart_examples, webnlg_examples, write_jsonl

# The smallest of the dev split's categories: about a tenth of its entries.
DEFAULT_UNSEEN = ("City", "Monument", "ComicsCharacter")


def _webnlg_category(wrapper, index, path):
    try:
        return wrapper[str(index)]["category"]
    except (KeyError, TypeError):
        raise InputError(f"entries[{index - 1}]: expected {{{str(index)!r}: {{'category': ...}}}}", path) from None


def split_webnlg(data, path, contexts, holdout, unseen):
    """(train, valid, test) entry lists: test is contexts // 2 entries of the unseen categories and the rest of
    the last seen ones; valid the `holdout` seen entries before those; train every other seen entry."""
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError("expected the LoRA code's WebNLG layout: {\"entries\": [...]}", path)
    categories = [_webnlg_category(wrapper, index, path) for index, wrapper in enumerate(entries, start=1)]
    unseen_entries = [e for e, c in zip(entries, categories) if c in unseen]
    seen_entries = [e for e, c in zip(entries, categories) if c not in unseen]
    n_unseen = min(contexts // 2, len(unseen_entries))
    n_seen = contexts - n_unseen
    if n_seen + holdout >= len(seen_entries):
        raise InputError(f"{len(seen_entries)} entries of seen categories cannot give {n_seen} test entries, "
                         f"{holdout} held-out entries and a training part", path)
    train = seen_entries[:len(seen_entries) - n_seen - holdout]
    valid = seen_entries[len(train):len(train) + holdout]
    test = unseen_entries[:n_unseen] + seen_entries[len(train) + holdout:]
    return train, valid, test


def renumber(entries):
    """The LoRA layout numbers entry i (from 1) as entries[i-1][str(i)]."""
    return {"entries": [{str(i): next(iter(wrapper.values()))} for i, wrapper in enumerate(entries, start=1)]}


def split_dart(data, path, contexts, holdout):
    """(train, valid, test): the last `contexts` triple sets are the test part, the `holdout` before them valid."""
    if not isinstance(data, list):
        raise InputError("expected a JSON list of DART examples", path)
    if contexts + holdout >= len(data):
        raise InputError(f"{len(data)} examples cannot give {contexts} test examples, {holdout} held-out examples "
                         "and a training part", path)
    cut = len(data) - contexts - holdout
    return data[:cut], data[cut:cut + holdout], data[cut + holdout:]


def write_demo_data(task, source, out, contexts, holdout, unseen=DEFAULT_UNSEEN):
    """Write the three parts, raw and formatted; returns {part: number of examples}."""
    if contexts < 1 or holdout < 1:
        raise InputError(f"the demo needs at least one test and one held-out entry (contexts {contexts}, "
                         f"holdout {holdout})")
    data = _load_json(source)
    if task == "webnlg":
        parts = split_webnlg(data, source, contexts, holdout, frozenset(unseen))
        parts = [renumber(part) for part in parts]
    else:
        parts = split_dart(data, source, contexts, holdout)
    counts = {}
    for name, part in zip(("train", "valid", "test"), parts):
        raw = os.path.join(out, f"{name}.json")
        with atomic_output(raw) as handle:
            json.dump(part, handle)
        if task == "webnlg":
            seen = frozenset(c for wrapper in parts[0]["entries"] for c in [next(iter(wrapper.values()))["category"]])
            examples = webnlg_examples(raw, seen_categories=seen)
        else:
            examples = dart_examples(raw)
        counts[name] = write_jsonl(examples, os.path.join(out, f"{name}_formatted.jsonl"))
    return counts


def parse_args(argv):
    parser = flags.Parser(prog="python -m loranlg.demo_data", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=("webnlg", "dart"), help="which data set")
    parser.add_argument("--source", required=True,
                        help="the dev split: WebNLG's dev.json (the LoRA code's layout) or DART's "
                             "dart-v1.1.1-full-dev.json")
    parser.add_argument("--out", required=True, help="the directory that receives the parts")
    parser.add_argument("--contexts", type=flags.positive_int, default=100,
                        help="entries (WebNLG; half of them from the unseen categories) or triple sets (DART) in "
                             "the test part (default: 100)")
    parser.add_argument("--holdout", type=flags.positive_int, default=20,
                        help="entries or triple sets kept out of training for the validation loss (default: 20)")
    parser.add_argument("--unseen", default=",".join(DEFAULT_UNSEEN),
                        help="WebNLG: comma-separated categories kept out of training, scored as unseen "
                             f"(default: {','.join(DEFAULT_UNSEEN)})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    counts = write_demo_data(args.task, args.source, args.out, args.contexts, args.holdout,
                             tuple(c for c in args.unseen.split(",") if c))
    print(f"demo data in {args.out}: " + ", ".join(f"{n} {part} examples" for part, n in counts.items()),
          file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
