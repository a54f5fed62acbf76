"""Raw dataset files -> formatted JSON lines: one {"context": ..., "completion": ...} per example (SPEC 2).

Each converter reproduces the original examples/NLG/src/format_converting_*.py byte for byte on valid input
(json.dumps with its defaults, so non-ASCII is written as \\u escapes); on bad input it raises an InputError
with file:line instead of crashing, and no output file is written.
"""

import json
import sys

from . import flags
from .errors import InputError
from .files import atomic_output, open_input, read_lines

# The WebNLG 2017 categories seen in training; `cate` is True for these ("seen"), False otherwise.
WEBNLG_SEEN_CATEGORIES = frozenset((
    "Airport", "Astronaut", "Building", "City", "ComicsCharacter",
    "Food", "Monument", "SportsTeam", "University", "WrittenWork",
))


def e2e_examples(path):
    """Yield the examples of an E2E raw file (`MR||text` a line), as the original reads them."""
    for number, line in read_lines(path):
        items = line.strip().split("||")
        if len(items) < 2:
            raise InputError("expected '<meaning representation>||<reference text>' (no '||' on this line)",
                             path, number)
        # Like the original: the whole line is stripped, then only the first two fields are used.
        yield {"context": items[0], "completion": items[1].strip("\n")}


def _load_json(path):
    with open_input(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err.msg}, column {err.colno})", path, err.lineno) from None
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from None


def _field(obj, key, path, where, kind=None):
    """obj[key], or a located error saying which entry lacks it (JSON files have no useful line numbers)."""
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"{where}: expected a key {key!r}", path)
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        raise InputError(f"{where}: {key!r} should be a {kind.__name__}, found {type(value).__name__}", path)
    return value


def _triples_text(triples):
    return " | ".join(f"{subject} : {relation} : {obj}" for subject, relation, obj in triples)


def webnlg_examples(path, category_counts=None, seen_categories=WEBNLG_SEEN_CATEGORIES):
    """Yield the examples of a WebNLG 2017 JSON file (the LoRA code's train/dev/test.json layout).

    Entry i (from 1) is `entries[i-1][str(i)]`; one example per lexicalisation whose comment is 'good';
    `cate` is whether the entry's category is one of `seen_categories` (the demo passes its own).
    """
    data = _load_json(path)
    entries = _field(data, "entries", path, "top level", list)
    for index, wrapper in enumerate(entries, start=1):
        where = f"entries[{index - 1}]"
        entry = _field(wrapper, str(index), path, where, dict)
        where = f"{where}[{str(index)!r}]"
        category = _field(entry, "category", path, where, str)
        if category_counts is not None:
            category_counts[category] = category_counts.get(category, 0) + 1
        triples = []
        for k, triple in enumerate(_field(entry, "modifiedtripleset", path, where, list)):
            triple_where = f"{where}['modifiedtripleset'][{k}]"
            triples.append(tuple(_field(triple, key, path, triple_where) for key in ("subject", "property", "object")))
        source = _triples_text(triples)
        for k, lex in enumerate(_field(entry, "lexicalisations", path, where, list)):
            lex_where = f"{where}['lexicalisations'][{k}]"
            if _field(lex, "comment", path, lex_where) == "good":
                yield {"context": source, "completion": _field(lex, "lex", path, lex_where),
                       "cate": category in seen_categories}


def dart_examples(path):
    """Yield the examples of a DART JSON file: one per annotation, relations lower-cased."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of examples at the top level, found {type(data).__name__}", path)
    for index, example in enumerate(data):
        where = f"example [{index}]"
        triples = []
        for k, triple in enumerate(_field(example, "tripleset", path, where, list)):
            if not (isinstance(triple, list) and len(triple) == 3 and isinstance(triple[1], str)):
                raise InputError(f"{where}['tripleset'][{k}]: expected [subject, property, object]", path)
            subject, relation, obj = triple
            triples.append((subject, relation.lower(), obj))
        source = _triples_text(triples)
        for k, annotation in enumerate(_field(example, "annotations", path, where, list)):
            yield {"context": source, "completion": _field(annotation, "text", path, f"{where}['annotations'][{k}]")}


def write_jsonl(examples, output_path, source=None):
    """Write examples one JSON object a line (the original's json.dumps defaults); returns how many.

    The output appears only when every example was read without error, and there was at least one (an empty
    output would only fail a later stage); `source` names the input in that error.
    """
    count = 0
    with atomic_output(output_path) as out:
        for example in examples:
            out.write(json.dumps(example) + "\n")
            count += 1
        if not count:
            raise InputError(f"no examples in the input, so no output ({output_path} not written)", source)
    return count


def convert(kind, input_path, output_path):
    """Convert one raw file of `kind` ('e2e', 'webnlg' or 'dart'); returns the number of examples written."""
    if kind == "e2e":
        count = write_jsonl(e2e_examples(input_path), output_path, input_path)
    elif kind == "webnlg":
        categories = {}
        count = write_jsonl(webnlg_examples(input_path, categories), output_path, input_path)
        for category, entries in categories.items():
            print("cate", category, entries, file=sys.stderr)
    elif kind == "dart":
        count = write_jsonl(dart_examples(input_path), output_path, input_path)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")
    print(f"{input_path} -> {output_path}: {count} examples", file=sys.stderr)
    return count


def converter_main(kind, argv=None):
    """The `format_converting_<kind>.py IN OUT` commands."""
    sources = {"e2e": "an E2E raw file, one '<MR>||<text>' a line (e.g. data/e2e/train.txt)",
               "webnlg": "a WebNLG 2017 JSON file as the LoRA code ships it (e.g. data/webnlg_challenge_2017/dev.json)",
               "dart": "a DART v1.1.1 JSON file (e.g. data/dart/dart-v1.1.1-full-dev.json)"}
    parser = flags.Parser(
        prog=f"format_converting_{kind}.py",
        description=f"Convert {sources[kind].split(' (')[0]} into formatted JSON lines: one "
                    '{"context": ..., "completion": ...} object a line'
                    + (' plus "cate" (true for the 10 categories seen in training).' if kind == "webnlg" else "."))
    parser.add_argument("input", metavar="IN", help=f"input: {sources[kind]}")
    parser.add_argument("output", metavar="OUT", help="output formatted jsonl (written only if the whole input is valid)")
    args = parser.parse_args(argv)
    convert(kind, args.input, args.output)
    return 0
