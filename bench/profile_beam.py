"""Where one batch of beam search spends its time: wall seconds with and without CUDA graphs, the CUDA
kernels (largest first) and the operators' host time, so that launch- or sync-bound steps show.

    python bench/profile_beam.py --data E2E_TEST_ENCODED.jsonl [--batch 128] [--precision bf16]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import torch  # noqa: E402

from loranlg import beam  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="encoded jsonl with contexts")
    parser.add_argument("--batch", type=int, default=128, help="distinct contexts in the batch (128)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="(bf16)")
    parser.add_argument("--top", type=int, default=20, help="rows listed (20)")
    parser.add_argument("--cuda_graph", action="store_true", help="profile the steps replayed as CUDA graphs")
    opts = parser.parse_args()
    torch.manual_seed(0)
    args = argparse.Namespace(model_card="gpt2.md", lora_dim=0, lora_alpha=128, init_checkpoint=None,
                              lora_checkpoint=None, precision=opts.precision)
    model = beam.load_model(args, torch.device("cuda"))  # as gpt2_beam.py builds it (padded head included)
    contexts, _ = beam.read_contexts(opts.data, 512, 64, 50257)
    batch = beam.distinct_batches(contexts, opts.batch)[0]
    settings = beam.BeamSettings(beam=10, eval_len=64, length_penalty=0.8, no_repeat_ngram_size=4,
                                 eos_ids=(50256, 628))
    graphs = opts.cuda_graph
    beam.beam_search(model, list(map(list, batch[:8])), settings, cuda_graphs=graphs)  # warm-up
    for label, use in (("CUDA graphs", True), ("eager", False)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        stats = {}
        beam.beam_search(model, list(map(list, batch)), settings, stats=stats, cuda_graphs=use)
        torch.cuda.synchronize()
        print(f"one batch of {len(batch)} contexts, {label}: {time.perf_counter() - start:.2f} s "
              f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; {stats.get('captures', 0)} graphs "
              f"captured, {stats.get('replays', 0)} replays)")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        beam.beam_search(model, list(map(list, batch)), settings, cuda_graphs=graphs)
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=opts.top, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
