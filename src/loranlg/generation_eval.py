"""BLEU, BLEU NLTK, METEOR and TER of WebNLG / DART outputs, as the WebNLG challenge's GenerationEval script
(github.com/WebNLG/GenerationEval, eval.py, with the nltk 3.5 and pyter3 0.3 it pins) computes them.

Inputs: a hypothesis file, one output a line, and `num_refs` reference files PREFIX0 .. PREFIX{num_refs-1};
file k holds the k-th reference of every segment, one a line, an empty line for a missing reference.

- BLEU: Moses multi-bleu-detok.perl over the raw lines: mteval-v13a tokenisation, case kept, BLEU-4 with
  clipped counts, brevity penalty against the closest reference length (of two, the shorter; an empty
  reference is one of length 0), x100. Written here, on mteval.py's counting, rather than through sacrebleu,
  whose BLEU splits words at every Unicode space where the Perl (bytes, no `use utf8`) splits at ASCII
  whitespace only, and whose zero-match and effective-order rules are its own.
- BLEU NLTK: nltk's corpus_bleu with smoothing method 3 over the nltk-tokenised text, segments without any
  non-empty reference left out.
- METEOR: meteor-1.5.jar (the copy pycocoevalcap ships) on the nltk-tokenised text, `-l en -norm -r N`, the
  references of all segments in one file, N consecutive lines per segment; the score is the jar's final line.
- TER: per segment, the smallest pyter3 TER over its references (an empty reference counts 1.0), averaged.

GenerationEval splits files at '\\n', so a file that ends with a newline gains an empty last segment (METEOR
then fails and is reported as -1; TER averages in a 1.0). We read a final newline as the end of the last line:
the scores are those of the same lines without it. (A reference file one line short that ends with a newline
is GenerationEval's way to write an empty last reference, and is read so.)
"""

import os
import re
import shutil
import subprocess
import tempfile

from . import coco_metrics, mteval, ter
from .errors import InputError
from .files import read_bytes
from .nltk_tokenize import word_tokenize

METRICS = ("bleu", "meteor", "ter")
NOT_IMPLEMENTED = ("chrf++", "bert", "bleurt")
BLEU_ORDER = 4
# Perl's \s on a byte string (multi-bleu-detok.perl reads bytes): ASCII whitespace only.
_PERL_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")


# ----------------------------------------------------------------------------------------------- inputs

def read_lines(path):
    """(lines, ends_with_newline) of a UTF-8 file: split at '\\n' only, a final newline ending the last line."""
    data = read_bytes(path)
    if not data:
        raise InputError("the file is empty; expected one line per segment", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start - line_start} of the line)", path,
                         data.count(b"\n", 0, err.start) + 1) from None
    ends_with_newline = text.endswith("\n")
    return (text[:-1] if ends_with_newline else text).split("\n"), ends_with_newline


def read_segments(path):
    """The lines of a UTF-8 file, split at '\\n' only; a final newline ends the last line (no empty segment)."""
    return read_lines(path)[0]


def reference_paths(prefix, num_refs):
    """PREFIX0 .. PREFIX{num_refs-1}; with one reference, PREFIX itself if it is a file (as GenerationEval)."""
    if num_refs < 1:
        raise InputError(f"-nr {num_refs}: the number of references must be at least 1")
    if num_refs == 1 and os.path.isfile(prefix):
        return [prefix]
    paths = [f"{prefix}{k}" for k in range(num_refs)]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        present = len(paths) - len(missing)
        raise InputError(f"file not found: -nr {num_refs} needs the {num_refs} files {prefix}0 .. "
                         f"{prefix}{num_refs - 1}, of which {present} exist (-R is a path prefix: "
                         "-R DIR/reference reads DIR/reference0, DIR/reference1, ...)", missing[0])
    return paths


def load(ref_prefix, hyp_path, num_refs):
    """(hypotheses, references): references[i] is the list of the num_refs references of segment i."""
    hypotheses = read_segments(hyp_path)
    columns = [reference_column(path, hyp_path, len(hypotheses)) for path in reference_paths(ref_prefix, num_refs)]
    return hypotheses, [list(refs) for refs in zip(*columns)]


def reference_column(path, hyp_path, count):
    """The `count` lines of one reference file. GenerationEval's files end without a newline, so there a file
    that ends with one has an empty last line (a last segment without that reference, as in its README):
    a file one line short that ends with a newline is read that way."""
    lines, ends_with_newline = read_lines(path)
    if ends_with_newline and len(lines) == count - 1:
        return lines + [""]
    if len(lines) != count:
        raise InputError(f"{len(lines)} lines, but the hypothesis {hyp_path} has {count} (not counting a final "
                         "newline); each reference file needs one line per segment, in the hypothesis' order, an "
                         "empty line where a segment has no such reference", path)
    return lines


def parse_metrics(text):
    """GenerationEval's -m: comma-separated names, any case; those we do not compute are refused."""
    names = [name.strip() for name in text.lower().split(",") if name.strip()]
    for name in names:
        if name in NOT_IMPLEMENTED:
            raise InputError(f"-m {name}: not implemented here (this scorer computes {', '.join(METRICS)})")
        if name not in METRICS:
            raise InputError(f"-m {name}: unknown metric; choose from {', '.join(METRICS)}")
    if not names:
        raise InputError(f"-m names no metric; choose from {', '.join(METRICS)}")
    return [name for name in METRICS if name in names]


# ------------------------------------------------------------------------------------------------- BLEU

def detok_words(line):
    """The words multi-bleu-detok.perl counts in one line: mteval-v13a tokenisation, case kept."""
    return [word for word in _PERL_WHITESPACE.split(mteval.normalize(line, lowercase=False)) if word]


class _BleuSegment:
    """What mteval.bleu_from_segments reads: hyp and refs (word lists) and the clipped n-gram matches."""

    def __init__(self, hypothesis, references):
        self.hyp = detok_words(hypothesis)
        self.refs = [detok_words(ref) for ref in references]
        ref_counts = [mteval.ngram_counts(ref, BLEU_ORDER) for ref in self.refs]
        self.matches = mteval.clipped_matches(mteval.ngram_counts(self.hyp, BLEU_ORDER), ref_counts)


def multi_bleu_detok(hypotheses, references):
    """Corpus BLEU-4 (a fraction) of multi-bleu-detok.perl; references[i] may hold empty strings."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    return mteval.bleu_from_segments([_BleuSegment(hyp, refs) for hyp, refs in zip(hypotheses, references)])


def bleu_nltk(hyps_tok, refs_tok):
    """GenerationEval's 'BLEU NLTK' (a fraction): corpus_bleu, smoothing method 3, on tokenised text."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    kept_refs, kept_hyps = [], []
    for hyp, refs in zip(hyps_tok, refs_tok):
        words = [ref.split() for ref in refs if ref.strip()]
        if words:
            kept_refs.append(words)
            kept_hyps.append(hyp.split())
    if not kept_hyps:
        return 0.0
    return float(corpus_bleu(kept_refs, kept_hyps, smoothing_function=SmoothingFunction().method3))


# ----------------------------------------------------------------------------------------------- METEOR

def find_java():
    java = shutil.which("java")
    if java is None:
        raise InputError("`java` was not found: METEOR 1.5 runs on Java; " + coco_metrics.JAVA_HINT)
    return java


class MeteorRun:
    """`java -Xmx2G -jar meteor-1.5.jar HYP REF -l en -norm -r N`, started at once (the JVM loads its
    paraphrase table for seconds while Python computes the other metrics); result() waits for the score."""

    def __init__(self, hyps_tok, refs_tok, num_refs):
        java = find_java()
        jar = coco_metrics._pycocoevalcap_file("pycocoevalcap.meteor.meteor", "meteor-1.5.jar")
        self.workdir = tempfile.TemporaryDirectory(prefix="loranlg-meteor-")
        hyp_file, ref_file = (os.path.join(self.workdir.name, name) for name in ("hypothesis", "references"))
        # Every line ends with a newline: joined without one, an empty last line would not be a line to Java.
        with open(hyp_file, "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(hyp + "\n" for hyp in hyps_tok)
        with open(ref_file, "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(ref + "\n" for refs in refs_tok for ref in refs)
        self.stdout = open(os.path.join(self.workdir.name, "stdout"), "w+b")
        self.stderr = open(os.path.join(self.workdir.name, "stderr"), "w+b")
        command = [java, "-Xmx2G", "-jar", jar, hyp_file, ref_file, "-l", "en", "-norm", "-r", str(num_refs)]
        try:
            self.process = subprocess.Popen(command, cwd=self.workdir.name, stdin=subprocess.DEVNULL,
                                            stdout=self.stdout, stderr=self.stderr)
        except OSError as err:
            self.stdout.close()
            self.stderr.close()
            self.workdir.cleanup()
            raise InputError(f"cannot run {java}: {err.strerror}; " + coco_metrics.JAVA_HINT) from None

    def result(self):
        returncode = self.process.wait()
        self.stdout.seek(0)
        lines = self.stdout.read().decode("utf-8", "replace").strip().splitlines()
        last = lines[-1].split() if lines else []
        if returncode != 0 or last[:2] != ["Final", "score:"] or len(last) != 3:
            self.stderr.seek(0)
            message = self.stderr.read().decode("utf-8", "replace").strip().splitlines() or lines
            raise InputError(f"METEOR failed (java exit status {returncode}): "
                             + (" | ".join(line.strip() for line in message[-3:]) or "no message"))
        return float(last[2])

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stdout.close()
        self.stderr.close()
        self.workdir.cleanup()


def meteor(hyps_tok, refs_tok, num_refs):
    """METEOR 1.5 of tokenised hypotheses against refs_tok[i] (num_refs strings each, empty ones included)."""
    run = MeteorRun(hyps_tok, refs_tok, num_refs)
    try:
        return run.result()
    finally:
        run.close()


# -------------------------------------------------------------------------------------------------- TER

def segment_ter(hyp_tok, refs_tok):
    """The smallest pyter3 TER of one tokenised hypothesis over its references; an empty reference is 1.0.
    A reference repeated (gpt2_decode.py pads a short group with its first) is scored once."""
    hyp_words = hyp_tok.split()
    return min(ter.ter(hyp_words, ref.split()) if ref.split() else 1.0 for ref in dict.fromkeys(refs_tok))


def ter_score(hyps_tok, refs_tok):
    """GenerationEval's TER: segment_ter averaged over the segments."""
    return sum(segment_ter(hyp, refs) for hyp, refs in zip(hyps_tok, refs_tok)) / len(hyps_tok)


# ---------------------------------------------------------------------------------------------- scoring

def tokenize_all(hypotheses, references):
    """' '.join(nltk.word_tokenize(line)) of every hypothesis and reference (NLTK 3.5's rules)."""
    hyps_tok = [" ".join(word_tokenize(hyp)) for hyp in hypotheses]
    refs_tok = [[" ".join(word_tokenize(ref)) for ref in refs] for refs in references]
    return hyps_tok, refs_tok


def score(hypotheses, references, metrics=METRICS):
    """{'bleu' (x100), 'bleu_nltk', 'meteor', 'ter'} for the metrics asked; references[i] holds the same number
    of strings for every segment (empty strings for missing references). METEOR runs while Python works."""
    if not hypotheses or len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    hyps_tok, refs_tok = tokenize_all(hypotheses, references)
    run = MeteorRun(hyps_tok, refs_tok, len(references[0])) if "meteor" in metrics else None
    scores = {}
    try:
        if "bleu" in metrics:
            scores["bleu"] = 100 * multi_bleu_detok(hypotheses, references)
            scores["bleu_nltk"] = bleu_nltk(hyps_tok, refs_tok)
        if "ter" in metrics:
            scores["ter"] = ter_score(hyps_tok, refs_tok)
        if run is not None:
            scores["meteor"] = run.result()
    finally:
        if run is not None:
            run.close()
    return {name: scores[name] for name in ("bleu", "bleu_nltk", "meteor", "ter") if name in scores}


def evaluate(ref_prefix, hyp_path, num_refs, metrics=METRICS):
    """Read the files (see load) and score them: what eval.py -R ref_prefix -H hyp_path -nr num_refs prints."""
    if "meteor" in metrics:
        find_java()  # before minutes of work
    hypotheses, references = load(ref_prefix, hyp_path, num_refs)
    return score(hypotheses, references, metrics)


# ----------------------------------------------------------------------------------------------- output

def table_cells(scores):
    """(header, value) as GenerationEval's table shows them: BLEU as the Perl prints it (2 decimals),
    the others rounded to 2 decimals."""
    cells = []
    if "bleu" in scores:
        cells += [("BLEU", float(f"{scores['bleu']:.2f}")), ("BLEU NLTK", round(scores["bleu_nltk"], 2))]
    if "meteor" in scores:
        cells.append(("METEOR", round(scores["meteor"], 2)))
    if "ter" in scores:
        cells.append(("TER", round(scores["ter"], 2)))
    return cells


def format_table(scores):
    """The table GenerationEval prints (tabulate's 'simple' format: numbers right-aligned, in %g)."""
    columns = []
    for header, value in table_cells(scores):
        text = format(value, "g")
        width = max(len(header) + 2, len(text))
        columns.append((header.rjust(width), "-" * width, text.rjust(width)))
    return "\n".join("  ".join(row) for row in zip(*columns))
