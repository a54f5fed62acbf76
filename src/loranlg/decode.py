"""Beam-search token ids -> text files for the evaluators (the original's gpt2_decode.py).

References are the completions of the formatted input file grouped by identical context, in first-seen
order; each group's prediction is the decoded ids of a line with that context. Texts are cut at the
first "<|endoftext|>", then at the first blank line ("\\n\\n"), and stripped.
"""

import os
import re

from .errors import InputError
from .files import atomic_output, read_jsonl

END_OF_TEXT = "<|endoftext|>"
FILTERS = ("all", "seen", "unseen")
REF_TYPES = ("e2e", "webnlg", "dart")


def cut_text(text):
    return text.split(END_OF_TEXT)[0].split("\n\n")[0].strip()


def standard_tokenize(text):
    """Split every non-word character off (the original's `--tokenize`), one space between tokens."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def post_process(text, tokenize=False, lower=False):
    if lower:
        text = text.lower()
    if tokenize:
        text = standard_tokenize(text)
    return text


def _keeps(obj, category_filter, path, number):
    if category_filter == "all":
        return True
    if "cate" not in obj:
        raise InputError(f"--filter {category_filter} needs a 'cate' key (true for categories seen in "
                         "training) on every line", path, number)
    return bool(obj["cate"]) == (category_filter == "seen")


def read_reference_groups(input_file, category_filter="all"):
    """Return (context of every line, {context: [references]} of the kept lines in first-seen order)."""
    contexts, groups = [], {}
    for number, obj in read_jsonl(input_file, required=("context", "completion")):
        context, completion = obj["context"], obj["completion"]
        if not isinstance(context, str) or not isinstance(completion, str):
            raise InputError("'context' and 'completion' must be strings (the formatted jsonl, not the "
                             "encoded one)", input_file, number)
        contexts.append(context)
        if _keeps(obj, category_filter, input_file, number):
            groups.setdefault(context, []).append(cut_text(completion))
    if not contexts:
        raise InputError("the file is empty; expected one {\"context\", \"completion\"} object a line", input_file)
    return contexts, groups


def _token_ids(obj, path, number):
    ids = obj["predict"]
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InputError("'predict' must be a list of token ids (integers)", path, number)
    return ids


def read_predictions(sample_file, contexts, groups, bpe, input_file):
    """{context: decoded prediction} for the kept groups; a line of a filtered-out group is passed over."""
    predictions, number = {}, 0
    for number, obj in read_jsonl(sample_file, required=("id", "predict")):
        line_id = obj["id"]
        if not isinstance(line_id, int) or isinstance(line_id, bool) or not 0 <= line_id < len(contexts):
            raise InputError(f"prediction id {line_id!r} has no line in --input_file {input_file} "
                             f"({len(contexts)} lines, ids 0..{len(contexts) - 1}); are the two files from "
                             "the same data set?", sample_file, number)
        context = contexts[line_id]
        if context not in groups:
            continue
        try:
            text = bpe.decode(_token_ids(obj, sample_file, number))
        except ValueError as err:
            raise InputError(str(err), sample_file, number) from None
        predictions[context] = cut_text(text)
    if number == 0:
        raise InputError('the file is empty; expected one {"id", "predict"} object a line', sample_file)
    return predictions


def pair_up(groups, predictions, sample_file, input_file):
    """[references] and [prediction] in group order; every group must have its prediction."""
    missing = [context for context in groups if context not in predictions]
    if missing:
        raise InputError(f"{len(missing)} of {len(groups)} groups of {input_file} have no prediction "
                         f"(first: context {missing[0]!r}); the sample file should hold a line for every "
                         "context (did beam search stop early?)", sample_file)
    return list(groups.values()), [predictions[context] for context in groups]


def write_e2e(ref_file, pred_file, references, hypotheses, tokenize=False, lower=False):
    with atomic_output(ref_file) as refs_out, atomic_output(pred_file) as preds_out:
        for refs, hyp in zip(references, hypotheses):
            for ref in refs:
                refs_out.write(post_process(ref, tokenize, lower) + "\n")
            refs_out.write("\n")
            preds_out.write(post_process(hyp, tokenize, lower) + "\n")


def write_multi_reference(ref_dir, pred_file, references, hypotheses, ref_num, tokenize=False, lower=False):
    """reference0..reference{ref_num-1} in ref_dir, one line per group (short groups repeat their first)."""
    if os.path.exists(ref_dir) and not os.path.isdir(ref_dir):
        raise InputError("--output_ref_file must be a directory for webnlg/dart references", ref_dir)
    columns = [[post_process(refs[k] if k < len(refs) else refs[0], tokenize, lower) for refs in references]
               for k in range(ref_num)]
    for k, column in enumerate(columns):
        with atomic_output(os.path.join(ref_dir, f"reference{k}")) as out:
            out.writelines(line + "\n" for line in column)
    with atomic_output(pred_file) as out:
        out.writelines(post_process(hyp, tokenize, lower) + "\n" for hyp in hypotheses)


def decode_files(bpe, sample_file, input_file, output_ref_file, output_pred_file, ref_type="e2e", ref_num=4,
                 tokenize=False, lower=False, category_filter="all"):
    """Read, decode and check everything first; then write the outputs. Returns the number of groups."""
    if ref_num < 1:
        raise InputError(f"--ref_num must be at least 1, got {ref_num}")
    contexts, groups = read_reference_groups(input_file, category_filter)
    if not groups:
        raise InputError(f"no line of the file is kept by --filter {category_filter}", input_file)
    predictions = read_predictions(sample_file, contexts, groups, bpe, input_file)
    references, hypotheses = pair_up(groups, predictions, sample_file, input_file)
    if ref_type == "e2e":
        write_e2e(output_ref_file, output_pred_file, references, hypotheses, tokenize, lower)
    else:
        write_multi_reference(output_ref_file, output_pred_file, references, hypotheses, ref_num, tokenize, lower)
    return len(groups)
