"""scripts/sweep_e2e.sh --demo at a reduced size: the base model, two cells (two target sets), the table and the
plot; seed sweeps through a stand-in interpreter (the dealing to GPUs, a failed seed, resuming, mean ± std against
hand-computed values); sweep_table.py on WebNLG runs; the argument checks."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_script, stand_in_gpu

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_sweep_produces_its_table(shared_dir, tmp_path):
    if shutil.which("java") is None:
        pytest.skip("no java: the E2E evaluator needs a Java runtime")
    work = tmp_path / "sweep"
    env = dict(VOCAB_DIR=str(shared_dir / "vocab"), E2E_SOURCE_DIR=str(shared_dir / "data" / "e2e"),
               DEMO_CARD="gpt2.tiny", DEMO_STEPS="4", SWEEP_DEMO_STEPS="4", SWEEP_DEMO_CONTEXTS="2",
               DEMO_HOLDOUT="2", TRAIN_ARGS="--train_batch_size 4", BEAM_ARGS="--eval_len 16")
    done = run_script("sweep_e2e.sh", "--demo", "--ranks", "2", "--targets", "q,v;o,fc", "--work_dir", work,
                      env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (work / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| q,v") or line.startswith("| o,fc")]
    # gpt2.tiny (d = 64, 2 layers) at r = 2, per layer: q,v = 2 * (2 r d); o,fc = 2 r d + (r d + 4 d r)
    assert rows[0].startswith("| q,v | 2 | 1,024 | ") and rows[1].startswith("| o,fc | 2 | 1,792 | "), table
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9 and "-" not in cells[3:], row  # a validation loss and five scores each
    assert (work / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    saved = (work / "r2_ofc" / "model.4.pt")
    assert saved.is_file()


def test_bad_targets_are_refused_before_any_run(tmp_path):
    done = run_script("sweep_e2e.sh", "--demo", "--targets", "q,v;x", "--work_dir", tmp_path / "w")
    assert done.returncode == 2 and "'x'" in done.stderr
    assert not (tmp_path / "w" / "base").exists()
    done = run_script("sweep_e2e.sh", "--help")
    assert done.returncode == 0 and "--ranks" in done.stdout


# A stand-in interpreter for the seed sweep's chain: gpt2_ft.py, gpt2_beam.py, gpt2_decode.py and measure_scores.py
# write small files at once (the scores a fixed table per seed), the comparison and loss plot of each run are
# skipped, and every other command (the sweep's own table among them) runs on the real Python.
STAND_IN = r'''#!{python}
import json, os, re, sys, time
SCORES = {{110: (0.7000, 8.80), 111: (0.7100, 8.90), 112: (0.6950, 8.60)}}  # BLEU, NIST per seed
script = os.path.basename(sys.argv[1]) if len(sys.argv) > 1 else ""
args = sys.argv[2:]
def flag(name):
    return args[len(args) - 1 - args[::-1].index(name) + 1]
if script == "gpt2_ft.py":
    work, seed = flag("--work_dir"), int(flag("--random_seed"))
    log = os.environ["LOG"]
    with open(log, "a") as handle:
        handle.write(f"train seed={{seed}} gpu={{os.environ.get('CUDA_VISIBLE_DEVICES')}} "
                     f"r={{flag('--lora_dim')}} targets={{flag('--lora_targets')}}\n")
    if str(seed) == os.environ.get("FAIL_SEED"):
        sys.exit("stand-in: this seed fails")
    if seed == 110 and os.environ.get("WAIT_FOR_SEED"):  # runs at once: 110 ends only after the other seed started
        for _ in range(600):
            if "seed=" + os.environ["WAIT_FOR_SEED"] in open(log).read():
                break
            time.sleep(0.05)
        else:
            sys.exit("stand-in: the other GPU's seed never started")
    print("trainable parameters: 393,216")
    open(os.path.join(work, "model.5.pt"), "w").write("x")
    open(os.path.join(work, "metrics.jsonl"), "w").write(json.dumps({{"valid_loss": seed / 100}}) + "\n")
elif script == "gpt2_beam.py":
    open(os.path.join(flag("--work_dir"), flag("--output_file")), "w").write("{{}}\n")
elif script == "gpt2_decode.py":
    for name in ("--output_ref_file", "--output_pred_file"):
        open(flag(name), "w").write("x\n")
elif script == "measure_scores.py":
    bleu, nist = SCORES[int(re.search(r"/seed(\d+)/", args[-1]).group(1))]
    print(json.dumps({{"BLEU": bleu, "NIST": nist, "METEOR": 0.46, "ROUGE_L": 0.71, "CIDEr": 2.5}}))
elif script in ("compare_with_paper.py", "plot_losses.py"):
    pass
else:
    os.execv({python!r}, [{python!r}] + sys.argv[1:])
'''


def seed_sweep_env(tmp_path, **extra):
    """The stand-in interpreter, a java and an nvidia-smi on PATH, and the inputs the stage scripts check for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / "java").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("python", "java"):
        (bin_dir / tool).chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "test_formatted.jsonl", "encoder.json", "base.bin"):
        (data / name).write_text("{}\n")
    env = dict(PYTHON=str(bin_dir / "python"), LOG=str(tmp_path / "log"), DATA_DIR=str(data), VOCAB_DIR=str(data),
               INIT_CHECKPOINT=str(data / "base.bin"), PATH=f"{bin_dir}:{stand_in_gpu(tmp_path)}")
    env.update(extra)
    return env


def table_row(text, prefix):
    rows = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, text
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_seed_sweep_deals_the_seeds_reports_a_failure_and_resumes(tmp_path):
    work = tmp_path / "sweep"
    env = seed_sweep_env(tmp_path, FAIL_SEED="111", WAIT_FOR_SEED="111", CUDA_VISIBLE_DEVICES="3,5,7")
    done = run_script("sweep_e2e.sh", "--seeds", "110,111,112", "--ngpu", "2", "--work_dir", work, env=env)
    assert done.returncode == 1 and "some runs failed" in done.stderr, done.stderr[-3000:]
    # Dealt in turn to the first two visible GPUs, the two GPUs' runs at once (110 waited for 111 to start).
    # --seeds alone: the paper's cell, r 4 on q,v.
    assert sorted((tmp_path / "log").read_text().splitlines()) == [
        "train seed=110 gpu=3 r=4 targets=q,v", "train seed=111 gpu=5 r=4 targets=q,v",
        "train seed=112 gpu=3 r=4 targets=q,v"]
    assert (work / "r4_qv" / "seed111" / "sweep.failed").read_text().strip() == "train"
    table = (work / "sweep.md").read_text()
    # targets, r, trainable, seeds, val loss, BLEU, NIST, METEOR, ROUGE-L, CIDEr over seeds 110 and 112:
    # BLEU 70.00, 69.50: mean 69.75, sample std sqrt(2 x 0.25^2 / 1) = 0.354; NIST 8.80, 8.60: 8.700 ± 0.141;
    # the loss 1.10, 1.12: 1.110 ± 0.014; METEOR alike: 46.00 ± 0.00.
    assert table_row(table, "| q,v |") == ["q,v", "4", "393,216", "2 of 3", "1.110 ± 0.014", "69.75 ± 0.35",
                                            "8.700 ± 0.141", "46.00 ± 0.00", "71.00 ± 0.00", "2.500 ± 0.000"]
    assert f"- r 4, q,v, seed 111: failed in train (see {work}/r4_qv/seed111/sweep.log)" in table
    results = (work / "results.md").read_text()
    assert table_row(results, "| **ours** r 4, q,v |")[2:5] == ["0.39M", "2 of 3", "**69.75 ± 0.35**"]
    assert table_row(results, "| paper GPT-2 M | LoRA (ref.)")[4] == "70.4 ± .1"
    assert table_row(results, "| ours r 4, q,v vs paper LoRA")[4] == "below (-0.65)"
    assert "seed 111: failed in train" in results

    # Again without the failure: the finished seeds are skipped, the failed one runs; three seeds in the means.
    env.pop("FAIL_SEED")
    again = run_script("sweep_e2e.sh", "--seeds", "110,111,112", "--ngpu", "2", "--work_dir", work, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    for seed in (110, 112):
        assert f"r=4 targets=q,v seed {seed} finished, skipped" in again.stderr
    assert (tmp_path / "log").read_text().splitlines()[3:] == ["train seed=111 gpu=3 r=4 targets=q,v"]
    assert not (work / "r4_qv" / "seed111" / "sweep.failed").exists()
    # BLEU 70.00, 71.00, 69.50: mean 70.1667, sample std sqrt((0.1667^2 + 0.8333^2 + 0.6667^2) / 2) = 0.764;
    # NIST 8.80, 8.90, 8.60: 8.767 ± 0.153.
    row = table_row((work / "sweep.md").read_text(), "| q,v |")
    assert row[3:7] == ["3", "1.110 ± 0.010", "70.17 ± 0.76", "8.767 ± 0.153"]
    assert "Not in the" not in (work / "sweep.md").read_text()


def test_seeds_are_checked_before_any_run(tmp_path):
    for seeds, message in (("110,x", "--seeds takes a comma list of whole numbers"), ("110,", "got '110,'"),
                           ("7,8,7", "names seed 7 twice")):
        done = run_script("sweep_e2e.sh", "--seeds", seeds, "--ngpu", "1", "--work_dir", tmp_path / "w")
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    done = run_script("sweep.sh", "--task", "dart", "--seeds", "1,2", "--work_dir", tmp_path / "w", "--",
                      "--random_seed", "3")
    assert done.returncode == 2 and "drop it after --" in done.stderr
    assert not (tmp_path / "w").exists()
    helped = run_script("sweep.sh", "--help")
    assert helped.returncode == 0 and "--seeds" in helped.stdout and "sample standard deviation" in helped.stdout


def test_webnlg_seed_table_beside_the_papers_intervals(tmp_path):
    """sweep_table.py over hand-made WebNLG runs: two seeds scored, a third not yet."""
    runs = tmp_path / "sweep.runs"
    lines = []
    for seed, bleus in ((1, (46.0, 62.0, 55.0)), (2, (47.0, 62.4, 55.6)), (3, ())):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        lines.append(f"4 q,v {seed} {run}")
        for subset, bleu in zip(("unseen", "seen", "all"), bleus):
            (run / f"scores_{subset}.json").write_text(json.dumps({"bleu": bleu, "meteor": 0.4, "ter": 0.5}))
    runs.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep_table.py"), "--runs", str(runs), "--task",
                           "webnlg", "--output", str(tmp_path / "sweep.md"), "--results", str(tmp_path / "results.md"),
                           "--model", "md"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # U 46.0, 47.0: 46.50 ± sqrt(2 x 0.5^2) = 0.71; S 62.0, 62.4: 62.20 ± 0.28; A 55.0, 55.6: 55.30 ± 0.42.
    assert table_row((tmp_path / "sweep.md").read_text(), "| q,v |") == [
        "q,v", "4", "-", "2 of 3", "-", "46.50 ± 0.71", "62.20 ± 0.28", "55.30 ± 0.42", "0.4000 ± 0.0000",
        "0.5000 ± 0.0000"]
    results = (tmp_path / "results.md").read_text()
    assert table_row(results, "| **ours** r 4, q,v |")[3:] == ["2 of 3", "**46.50 ± 0.71**", "**62.20 ± 0.28**",
                                                               "**55.30 ± 0.42**"]
    assert table_row(results, "| paper GPT-2 M | LoRA (ref.)")[4:] == ["46.7 ± .4", "62.1 ± .2", "55.3 ± .2"]
    assert table_row(results, "| ours r 4, q,v vs paper LoRA")[4:] == ["inside (-0.20)", "inside (+0.10)",
                                                                       "inside (+0.00)"]
    assert f"- r 4, q,v, seed 3: no scores yet (not run, or not finished: {tmp_path}/seed3)" in results
