"""CPU benchmark of eval/GenerationEval/eval.py over the whole WebNLG 2017 test set (1,862 segments).

    python bench/bench_generation_eval.py [--test_xml ../shared/data/webnlg_challenge_2017/test/testdata_with_lex.xml]

There are no decoded outputs here, so the case is built from the test set's lexicalisations: the hypothesis of
an entry is its first lexicalisation, its references are the others (at most 6), written as gpt2_decode.py
writes them for -nr 6 (reference0..5, a group with fewer references repeats its first; an entry with a single
lexicalisation is its own reference). Prints the seconds of each step run alone (wall and CPU of this
process; METEOR's Java runs in a child process, so its CPU shows in the wall time only), then the wall
seconds of the whole command as a user runs it, where METEOR runs in parallel with the rest.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from loranlg import generation_eval  # noqa: E402

NUM_REFS = 6
DEFAULT_XML = REPO.parent / "shared" / "data" / "webnlg_challenge_2017" / "test" / "testdata_with_lex.xml"


def build_case(test_xml, directory):
    """Writes directory/hypothesis and directory/reference0..5; returns the number of segments."""
    hypotheses, columns = [], [[] for _ in range(NUM_REFS)]
    for entry in ET.parse(test_xml).iter("entry"):
        lexes = [" ".join((lex.text or "").split()) for lex in entry.iter("lex")]
        others = lexes[1:NUM_REFS + 1] or lexes[:1]
        hypotheses.append(lexes[0])
        for k in range(NUM_REFS):
            columns[k].append(others[k] if k < len(others) else others[0])
    (directory / "hypothesis").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    for k, column in enumerate(columns):
        (directory / f"reference{k}").write_text("\n".join(column) + "\n", encoding="utf-8")
    return len(hypotheses)


def timed(label, function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    print(f"{label:<28} {time.perf_counter() - wall:7.2f} s wall {time.process_time() - cpu:7.2f} s cpu")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test_xml", default=str(DEFAULT_XML), help="WebNLG 2017 testdata_with_lex.xml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        segments = build_case(args.test_xml, directory)
        prefix, hyp_path = str(directory / "reference"), str(directory / "hypothesis")
        print(f"{segments} segments, -nr {NUM_REFS}")
        hyps, refs = timed("read the files", generation_eval.load, prefix, hyp_path, NUM_REFS)
        hyps_tok, refs_tok = timed("nltk tokenisation", generation_eval.tokenize_all, hyps, refs)
        bleu = timed("BLEU (multi-bleu-detok)", generation_eval.multi_bleu_detok, hyps, refs)
        bleu_nltk = timed("BLEU NLTK", generation_eval.bleu_nltk, hyps_tok, refs_tok)
        ter = timed("TER (pyter3)", generation_eval.ter_score, hyps_tok, refs_tok)
        meteor = timed("METEOR (java, alone)", generation_eval.meteor, hyps_tok, refs_tok, NUM_REFS)
        print(json.dumps({"bleu": 100 * bleu, "bleu_nltk": bleu_nltk, "meteor": meteor, "ter": ter}))
        command = [sys.executable, str(REPO / "eval" / "GenerationEval" / "eval.py"), "-R", prefix, "-H", hyp_path,
                   "-nr", str(NUM_REFS), "-m", "bleu,meteor,ter"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        print(f"{'whole command (eval.py)':<28} {time.perf_counter() - start:7.2f} s wall")
        print(result.stdout.rstrip() or result.stderr.rstrip())


if __name__ == "__main__":
    main()
