"""The comparison with the paper's tables (report.py, paper_results.py) and the loss plot (loss_plot.py), with their
two scripts."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from loranlg.errors import InputError
from loranlg.loss_plot import moving_average, plot_losses, read_loss_history
from loranlg.paper_results import PaperScore, generation_rows, paper_rows
from loranlg.report import comparison_table, generation_table, read_scores

# The official score block of SPEC 8 (devel-conc.txt vs baseline-output.txt), as measure_scores.py prints it.
OFFICIAL_BLOCK = """SCORES:
==============
BLEU: 0.7203
NIST: 7.7889
METEOR: 0.4801
ROUGE_L: 0.7910
CIDEr: 2.3039
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_py_script(name, *args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True)


def table_row(table, first_cell):
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{table}")


def test_paper_rows_hold_table_3():
    lora_md = dict((method, scores) for method, _, scores in paper_rows("md"))["LoRA"]
    assert [lora_md[m].value for m in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")] == [70.4, 8.85, 46.8, 71.8, 2.53]
    assert [lora_md[m].half_width for m in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")] == [0.1, 0.02, 0.2, 0.1, 0.02]
    lg = paper_rows("lg")
    assert len(paper_rows("md")) == 7 and len(lg) == 5
    assert lg[-1][0] == "LoRA" and lg[-1][1] == "0.77M" and lg[-1][2]["ROUGE_L"].half_width == 0.2
    assert lg[0][2]["CIDEr"].value == 2.45


@pytest.mark.parametrize("text, ours, mark", [
    ("70.4+-.1", 70.45, "inside"), ("70.4+-.1", 70.5, "inside"), ("70.4+-.1", 70.51, "above"),
    ("70.4+-.1", 70.29, "below"),
    # printed without an interval: the rounding of the print, half a unit of the last digit
    ("68.2", 68.24, "inside"), ("68.2", 68.26, "above"), ("68.2", 68.14, "below"),
    ("8.62", 8.624, "inside"), ("8.62", 8.626, "above"),
])
def test_marks_against_the_interval(text, ours, mark):
    assert PaperScore(text).mark(ours) == mark


def test_reads_the_score_block_and_the_json_alike(tmp_path):
    block = tmp_path / "scores.txt"
    block.write_text(OFFICIAL_BLOCK)
    as_json = tmp_path / "scores.json"
    as_json.write_text(json.dumps({"BLEU": 0.7203, "NIST": 7.7889, "METEOR": 0.4801, "ROUGE_L": 0.791,
                                   "CIDEr": 2.3039}))
    expected = {"BLEU": 0.7203, "NIST": 7.7889, "METEOR": 0.4801, "ROUGE_L": 0.791, "CIDEr": 2.3039}
    assert read_scores(block) == expected
    assert read_scores(as_json) == expected


@pytest.mark.parametrize("content, message", [
    ('{"BLEU": 0.7, "NIST": 8.1}', "no score for METEOR, ROUGE_L, CIDEr"),
    ("SCORES:\nBLEU: abc\n", "BLEU is not a number"),
    ('{"BLEU": NaN, "NIST": 1, "METEOR": 0.1, "ROUGE_L": 0.1, "CIDEr": 0.1}', "BLEU is not a finite number"),
])
def test_bad_score_files_are_named(tmp_path, content, message):
    path = tmp_path / "scores.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        read_scores(path)
    assert str(path) in str(err.value)


def test_table_scales_like_the_paper_and_marks_each_metric():
    scores = {"BLEU": 0.7043, "NIST": 8.80, "METEOR": 0.4690, "ROUGE_L": 0.7175, "CIDEr": 2.53}
    table = comparison_table(scores, "md")
    # BLEU, METEOR, ROUGE-L x100; NIST and CIDEr as they are.
    assert table_row(table, "**ours**")[3:] == ["**70.43**", "**8.800**", "**46.90**", "**71.75**", "**2.530**"]
    # 70.43 in 70.4 +- .1; 8.80 < 8.85 - .02; 46.90 in 46.8 +- .2; 71.75 in 71.8 +- .1; 2.53 on the mean
    marks = table_row(table, "ours vs paper LoRA")[3:]
    assert marks == ["inside (+0.03)", "below (-0.05)", "inside (+0.10)", "inside (-0.05)", "inside (+0.00)"]
    assert table_row(table, "paper GPT-2 M")[1] == "FT"  # the first paper row of GPT-2 M
    assert "70.4 ± .1" in table and "| LoRA (ref.) | 0.35M |" in table


def test_table_against_another_row_and_model():
    scores = {"BLEU": 0.69, "NIST": 8.78, "METEOR": 0.46, "ROUGE_L": 0.70, "CIDEr": 2.45}
    table = comparison_table(scores, "lg", method="FT")
    assert table_row(table, "ours vs paper FT")[3:] == [
        "above (+0.50)", "inside (+0.00)", "inside (+0.00)", "above (+0.10)", "inside (+0.00)"]
    assert "paper GPT-2 L" in table and "GPT-2 M" not in table
    with pytest.raises(InputError, match="no paper row for method 'Adapter-H'"):
        comparison_table(scores, "lg", method="Adapter-H")
    with pytest.raises(InputError, match="md and lg only"):
        comparison_table(scores, "sm")


def test_compare_script_prints_and_writes_the_table(tmp_path):
    scores = tmp_path / "scores.txt"
    scores.write_text(OFFICIAL_BLOCK)
    output = tmp_path / "out" / "results.md"
    done = run_py_script("compare_with_paper.py", "--scores", scores, "--model", "md", "--output", output,
                         "--note", "a note")
    assert done.returncode == 0, done.stderr
    written = output.read_text()
    assert written.strip() in done.stdout
    assert table_row(written, "**ours**")[3] == "**72.03**" and written.rstrip().endswith("a note")
    assert table_row(written, "ours vs paper LoRA")[3].startswith("above (+1.63)")


def test_compare_script_bad_input_exits_2_without_output(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text('{"BLEU": 0.7}')
    output = tmp_path / "results.md"
    done = run_py_script("compare_with_paper.py", "--scores", scores, "--model", "md", "--output", output)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "no score for NIST" in done.stderr
    assert not output.exists()
    missing = run_py_script("compare_with_paper.py", "--scores", tmp_path / "nope.json", "--model", "md",
                            "--output", output)
    assert missing.returncode == 2 and "file not found" in missing.stderr


def write_metrics(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_loss_history_places_evaluations_at_their_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, [
        {"step": 1, "epoch": 1, "lr": 0.0, "loss": 5.0, "ms": 10.0},
        {"step": 2, "epoch": 1, "lr": 1e-4, "loss": 4.0, "ms": 10.0},
        {"valid_loss": 3.5, "valid_ppl": 33.1},             # no step: after step 2
        {"step": 3, "epoch": 1, "lr": 1e-4, "loss": 3.0, "ms": 10.0},
        {"step": 3, "valid_loss": 3.0, "valid_ppl": 20.1},
    ])
    assert read_loss_history(metrics) == ([1, 2, 3], [5.0, 4.0, 3.0], [2, 3], [3.5, 3.0])


def test_moving_average_by_hand():
    assert moving_average([1, 2, 3, 4, 5], 2) == [1, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([4, 2], 5) == [4, 3]


def test_plot_script_writes_a_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, [{"step": s, "epoch": 1, "lr": 1e-3, "loss": 6.0 / s, "ms": 5.0} for s in range(1, 201)]
                  + [{"step": 200, "valid_loss": 0.5, "valid_ppl": 1.65}])
    output = tmp_path / "plots" / "losses.png"
    done = run_py_script("plot_losses.py", "--metrics", metrics, "--output", output)
    assert done.returncode == 0, done.stderr
    data = output.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert [p.name for p in output.parent.iterdir()] == ["losses.png"]  # no temporary left behind


@pytest.mark.parametrize("lines, message", [
    ([{"epoch": 1}], "no training step"),
    ([{"step": 1, "loss": "high"}], "loss is not a number"),
])
def test_plot_bad_metrics_leave_no_png(tmp_path, lines, message):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, lines)
    output = tmp_path / "losses.png"
    with pytest.raises(InputError, match=message):
        plot_losses(metrics, output)
    assert not output.exists()
    done = run_py_script("plot_losses.py", "--metrics", metrics, "--output", output)
    assert done.returncode == 2 and message in done.stderr and not output.exists()


def test_generation_rows_hold_the_readme_table():
    webnlg = dict((method, scores) for method, _, scores in generation_rows("webnlg", "md"))
    assert [webnlg["LoRA"][s].value for s in ("unseen", "seen", "all")] == [46.7, 62.1, 55.3]
    assert [webnlg["LoRA"][s].half_width for s in ("unseen", "seen", "all")] == [0.4, 0.2, 0.2]
    assert [webnlg["Fine-Tune"][s].value for s in ("unseen", "seen", "all")] == [30.4, 63.2, 47.6]
    dart_lg = dict((method, scores) for method, _, scores in generation_rows("dart", "lg"))
    assert list(dart_lg["LoRA"]) == ["all"] and dart_lg["LoRA"]["all"].value == 47.5
    assert dart_lg["Adapter"]["all"].half_width == 0.1
    # "+-.0" is an interval of zero width, not the rounding of the print.
    assert dict((m, s) for m, _, s in generation_rows("webnlg", "lg"))["Adapter"]["seen"].half_width == 0.0


def scores_file(tmp_path, name, bleu, meteor=0.4, ter=0.5):
    path = tmp_path / name
    path.write_text(json.dumps({"bleu": bleu, "bleu_nltk": bleu / 100, "meteor": meteor, "ter": ter}))
    return path


def test_webnlg_table_marks_each_subset(tmp_path):
    from loranlg.report import read_generation_scores
    subsets = {"unseen": scores_file(tmp_path, "u.json", 47.2), "seen": scores_file(tmp_path, "s.json", 62.0),
               "all": scores_file(tmp_path, "a.json", 55.0, meteor=0.41234, ter=0.43219)}
    table = generation_table("webnlg", {k: read_generation_scores(v) for k, v in subsets.items()}, "md")
    assert table_row(table, "**ours**")[3:6] == ["**47.20**", "**62.00**", "**55.00**"]
    # 47.2 > 46.7 + .4; 62.0 within 62.1 +- .2; 55.0 < 55.3 - .2
    assert table_row(table, "ours vs paper LoRA")[3:6] == ["above (+0.50)", "inside (-0.10)", "below (-0.30)"]
    assert "| all | 55.00 | 0.4123 | 0.4322 |" in table
    fine_tune = generation_table("webnlg", {k: read_generation_scores(v) for k, v in subsets.items()}, "lg",
                                 method="FT")
    assert "Fine-Tune (ref.)" in fine_tune and table_row(fine_tune, "ours vs paper Fine-Tune")[3] == "above (+5.50)"


def test_compare_script_for_dart_and_webnlg(tmp_path):
    dart = run_py_script("compare_with_paper.py", "--task", "dart", "--scores",
                         f"all={scores_file(tmp_path, 'd.json', 47.0)}", "--model", "md",
                         "--output", tmp_path / "dart.md")
    assert dart.returncode == 0, dart.stderr
    assert (tmp_path / "dart.md").read_text() in dart.stdout and "inside (-0.10)" in dart.stdout
    missing = run_py_script("compare_with_paper.py", "--task", "webnlg", "--scores",
                            f"all={tmp_path / 'd.json'}", "--model", "md", "--output", tmp_path / "w.md")
    assert missing.returncode == 2 and "no scores for the unseen, seen test subset(s)" in missing.stderr
    wrong = run_py_script("compare_with_paper.py", "--task", "webnlg", "--scores", f"{tmp_path / 'd.json'}",
                          "--model", "md", "--output", tmp_path / "w.md")
    assert wrong.returncode == 2 and "SUBSET=FILE" in wrong.stderr
    (tmp_path / "bad.json").write_text('{"bleu": 40.0, "meteor": "x", "ter": 0.5}')
    bad = run_py_script("compare_with_paper.py", "--task", "dart", "--scores", f"all={tmp_path / 'bad.json'}",
                        "--model", "md", "--output", tmp_path / "w.md")
    assert bad.returncode == 2 and "bad.json: no finite number for 'meteor'" in bad.stderr
    assert not (tmp_path / "w.md").exists()


def test_results_plot_panels_hold_the_paper_rows_and_ours():
    from loranlg.results_plot import comparison_panels
    e2e = comparison_panels("e2e", {"BLEU": 0.69, "NIST": 8.7, "METEOR": 0.46, "ROUGE_L": 0.71, "CIDEr": 2.45}, "md")
    assert [title for title, _ in e2e] == ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    bleu = e2e[0][1]
    assert bleu[-1] == ("ours", pytest.approx(69.0), None)
    assert bleu[-2] == ("LoRA 0.35M", 70.4, 0.1) and bleu[0] == ("FT 354.92M", 68.2, pytest.approx(0.05))
    webnlg = comparison_panels("webnlg", {s: {"bleu": b, "meteor": 0.4, "ter": 0.4}
                                          for s, b in (("unseen", 45.0), ("seen", 62.5), ("all", 55.0))}, "lg")
    assert [title for title, _ in webnlg] == ["BLEU, unseen (U)", "BLEU, seen (S)", "BLEU, all (A)"]
    assert webnlg[0][1][-2:] == [("LoRA 0.77M", 48.4, 0.3), ("ours", 45.0, None)]


def test_compare_script_draws_the_plot(tmp_path):
    done = run_py_script("compare_with_paper.py", "--task", "dart", "--scores",
                         f"all={scores_file(tmp_path, 'd.json', 47.0)}", "--model", "lg",
                         "--output", tmp_path / "r.md", "--plot", tmp_path / "r.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_MAGIC)
