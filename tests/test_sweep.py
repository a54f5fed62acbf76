"""scripts/sweep_e2e.sh --demo at a reduced size: the base model, two cells (two target sets), the table and the
plot; and its argument checks."""

import shutil

import pytest

from conftest import run_script

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
