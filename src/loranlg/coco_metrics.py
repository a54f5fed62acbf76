"""METEOR 1.5, ROUGE-L and CIDEr-D as the E2E metrics script computes them through the MS-COCO caption code.

Semantics of the official script (e2e-metrics measure_scores.py): every group of references is one COCO
"image"; the references and the system outputs are tokenised by the Stanford PTB tokenizer
(`-preserveLines -lowerCase`) with pycocoevalcap's punctuation tokens dropped, in two separate runs;
then METEOR 1.5 (`-l en -norm`), ROUGE-L (beta 1.2, best precision and recall over the references,
averaged over segments) and CIDEr-D (n = 4, sigma = 6, document frequencies over the corpus references)
score the tokenised text. The jars are the ones pycocoevalcap ships (PyPI); nothing is downloaded.

The two Java steps run through small wrappers of ours, with the same jars and arguments:
- pycocoevalcap's PTBTokenizer writes its temporary file into the installed package directory, which
  fails on read-only installs, and realigns its output with the inputs without checking the line count;
- pycocoevalcap's Meteor talks to the jar line by line with its stderr piped but never read (a chatty
  JVM blocks), and when the JVM cannot start (no Java, -Xmx2G refused) it fails on `float('')`.
Ours write to a private temporary directory, stream the input from a thread while reading the output,
keep stderr in a file, and report what went wrong.
"""

import concurrent.futures
import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading

from .errors import InputError

PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                             ".", "?", "!", ",", ":", "-", "--", "...", ";"])
JAVA_HINT = ("install a Java runtime (JRE 8 or newer, e.g. `sudo apt-get install default-jre-headless`) "
             "and put `java` on PATH")


def find_java():
    java = shutil.which("java")
    if java is None:
        raise InputError("`java` was not found: METEOR 1.5 and the PTB tokenizer of the E2E metrics run on "
                         "Java; " + JAVA_HINT)
    return java


def _pycocoevalcap_file(module, name):
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise InputError(f"the Python package pycocoevalcap is missing ({module}); "
                         "`pip install pycocoevalcap` (scripts/setup.sh does it)")
    path = os.path.join(os.path.dirname(spec.origin), name)
    if not os.path.isfile(path):
        raise InputError("pycocoevalcap is installed without this file; reinstall it", path)
    return path


def _java_failure(what, returncode, stderr_text):
    tail = "\n".join(stderr_text.strip().splitlines()[-5:])
    return InputError(f"{what} failed (java exit status {returncode}): {tail or 'no message'}")


class _PTBRun:
    """One run of the Stanford PTB tokenizer over `sentences`, started at once and collected by result()."""

    def __init__(self, java, jar, sentences):
        self.count = len(sentences)
        self.workdir = tempfile.TemporaryDirectory(prefix="loranlg-ptb-")
        source = os.path.join(self.workdir.name, "sentences.txt")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write("\n".join(s.replace("\n", " ") for s in sentences))
        self.process = subprocess.Popen(
            [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", source],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self):
        try:
            out, err = self.process.communicate()
        finally:
            self.workdir.cleanup()
        if self.process.returncode != 0:
            raise _java_failure("the PTB tokenizer", self.process.returncode, err.decode("utf-8", "replace"))
        lines = out.decode("utf-8").split("\n")
        if len(lines) > self.count and not any(lines[self.count:]):
            lines = lines[:self.count]
        if len(lines) != self.count:
            raise InputError(f"the PTB tokenizer returned {len(lines)} lines for {self.count} sentences")
        return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION) for line in lines]


def ptb_tokenize_many(*sentence_lists):
    """PTB-tokenise each list in its own tokenizer run (as the official script does), runs in parallel."""
    java = find_java()
    jar = _pycocoevalcap_file("pycocoevalcap.tokenizer.ptbtokenizer", "stanford-corenlp-3.4.1.jar")
    runs = [_PTBRun(java, jar, sentences) for sentences in sentence_lists]
    return [run.result() for run in runs]


class Meteor:
    """A METEOR 1.5 process, started at once: the JVM spends seconds loading its paraphrase table, which
    overlaps with the rest of the scoring. score() may be called once.

    The jar's protocol: one `SCORE ||| ref ||| ... ||| hyp` line per segment answers its statistics;
    one `EVAL ||| stats ||| ...` line then answers each segment's score and the corpus score.
    """

    def __init__(self):
        java = find_java()
        jar = _pycocoevalcap_file("pycocoevalcap.meteor.meteor", "meteor-1.5.jar")
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([java, "-jar", "-Xmx2G", jar, "-", "-", "-stdio", "-l", "en", "-norm"],
                                        cwd=os.path.dirname(jar), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr)

    def score(self, references, hypotheses):
        """Corpus METEOR and the per-segment scores of tokenised hypotheses[i] against references[i]."""
        score_lines = []
        for refs, hyp in zip(references, hypotheses):
            hyp = hyp.replace("|||", "").replace("  ", " ")
            score_lines.append(" ||| ".join(["SCORE", *refs, hyp]) + "\n")
        try:
            scores = _meteor_exchange(self.process, score_lines)
        except (BrokenPipeError, ValueError):
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.stderr.seek(0)
            raise _java_failure("METEOR", self.process.returncode,
                                self.stderr.read().decode("utf-8", "replace")) from None
        finally:
            self.stderr.close()
        return scores[-1], scores[:-1]

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stderr.close()


def _meteor_exchange(process, score_lines):
    def write_all():
        try:
            for line in score_lines:
                process.stdin.write(line.encode("utf-8"))
            process.stdin.flush()
        except BrokenPipeError:
            pass  # the JVM died; the reader sees the missing lines and reports its stderr

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    stats = [_read_line(process) for _ in score_lines]
    writer.join()
    process.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
    process.stdin.close()
    scores = [float(_read_line(process)) for _ in range(len(score_lines) + 1)]
    process.stdout.close()
    process.wait()
    return scores


def _read_line(process):
    line = process.stdout.readline()
    if not line:
        raise ValueError("METEOR stopped answering")
    return line.decode("utf-8").strip()


def rouge_l(references, hypotheses):
    from pycocoevalcap.rouge.rouge import Rouge

    keys = range(len(hypotheses))
    score, _ = Rouge().compute_score({k: references[k] for k in keys}, {k: [hypotheses[k]] for k in keys})
    return float(score)


def cider_d(references, hypotheses):
    from pycocoevalcap.cider.cider import Cider

    keys = range(len(hypotheses))
    score, _ = Cider().compute_score({k: references[k] for k in keys}, {k: [hypotheses[k]] for k in keys})
    return float(score)


def coco_scores(references, hypotheses):
    """{'METEOR', 'ROUGE_L', 'CIDEr'} of hypotheses[i] (str) against references[i] (list of str)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    meteor = Meteor()
    try:
        flat_refs = [ref for refs in references for ref in refs]
        tokenized_refs, tokenized_hyps = ptb_tokenize_many(flat_refs, hypotheses)
        grouped_refs, start = [], 0
        for refs in references:
            grouped_refs.append(tokenized_refs[start:start + len(refs)])
            start += len(refs)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            meteor_scores = pool.submit(meteor.score, grouped_refs, tokenized_hyps)
            scores = {"ROUGE_L": rouge_l(grouped_refs, tokenized_hyps), "CIDEr": cider_d(grouped_refs, tokenized_hyps)}
            scores["METEOR"] = meteor_scores.result()[0]
    finally:
        meteor.close()
    return {metric: scores[metric] for metric in ("METEOR", "ROUGE_L", "CIDEr")}
