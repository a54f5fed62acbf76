"""Where one batch of beam search spends its time: wall seconds, the CUDA kernels (largest first) and the
operators' host time, so that launch- or sync-bound steps show.

    python bench/profile_beam.py --data E2E_TEST_ENCODED.jsonl [--batch 128] [--precision bf16]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import torch  # noqa: E402

from gpt2_beam import distinct_batches, load_decoder, read_contexts  # noqa: E402
from loranlg.beam import BeamSettings, beam_search  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="encoded jsonl with contexts")
    parser.add_argument("--batch", type=int, default=128, help="distinct contexts in the batch (128)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="(bf16)")
    parser.add_argument("--top", type=int, default=20, help="rows listed (20)")
    parser.add_argument("--device", default="cuda", help="(cuda)")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    args = argparse.Namespace(model_card="gpt2.md", lora_dim=0, lora_alpha=128, init_checkpoint=None,
                              lora_checkpoint=None, precision=opts.precision)
    decoder = load_decoder(args, device)  # as gpt2_beam.py builds it (padded head included)
    contexts, _ = read_contexts(opts.data, 512, 64, 50257)
    batch = [list(c) for c in distinct_batches(contexts, opts.batch)[0]]
    settings = BeamSettings(beam=10, eval_len=64, length_penalty=0.8, no_repeat_ngram_size=4, eos_ids=(50256, 628))
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    beam_search(decoder, batch[:8], settings)  # warm-up
    synchronize()
    start = time.perf_counter()
    beam_search(decoder, batch, settings)
    synchronize()
    peak = f" (peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)" if device.type == "cuda" else ""
    print(f"one batch of {len(batch)} contexts: {time.perf_counter() - start:.2f} s{peak}")
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        beam_search(decoder, batch, settings)
        synchronize()
    table = prof.key_averages()
    if device.type == "cuda":
        print(table.table(sort_by="cuda_time_total", row_limit=opts.top, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
