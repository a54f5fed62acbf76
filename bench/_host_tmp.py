import sys, time, json, types, random
sys.path.insert(0, "src")
import torch
from loranlg import checkpoint, data, optim, train
from loranlg.loss import LMObjective
path = sys.argv[1]; compile_ = "--compile" in sys.argv
torch.manual_seed(0)
model = checkpoint.build_model("gpt2.md", 4, 32, 0.1, device="cuda")
examples = [(r["context"], r["completion"]) for r in map(json.loads, open(path))]
ds = data.FTDataset(examples, 8, 512)
idx = list(range(len(examples))); random.Random(0).shuffle(idx)
batches = [idx[i:i+8] for i in range(0, 8*300, 8)]
dev = torch.device("cuda")
t = time.perf_counter(); n = 0
for _, b in data.iterate_batches(ds, batches, 0, dev, **train.GRAPH_LAYOUTS['packed']): n += 1
torch.cuda.synchronize(); print(f"collate+H2D: {(time.perf_counter()-t)/n*1000:.3f} ms/batch")
gpu_batches = [b for _, b in data.iterate_batches(ds, batches, 0, dev, **train.GRAPH_LAYOUTS['packed'])]
args = types.SimpleNamespace(no_decay_bias=False, lr=2e-4, adam_beta1=0.9, adam_beta2=0.999, adam_epislon=1e-6,
                             weight_decay=0.01, correct_bias=True, clip=0.0, label_smooth=0.1)
opt = optim.create_optimizer(model, args, capturable=True)
obj = LMObjective(model, "bf16"); obj.store_frozen_matrices()
if compile_: train.compile_objective(obj)
trainable = [p for p in model.parameters() if p.requires_grad]
step = train.graphed_train_step(obj, opt, trainable, args)
t = time.perf_counter()
for b in gpu_batches: step(b)
torch.cuda.synchronize(); print(f"first pass (captures {len(step.captured)} graphs): {time.perf_counter()-t:.1f} s")
for rep in range(2):
    t = time.perf_counter()
    for b in gpu_batches: step(b)
    torch.cuda.synchronize(); print(f"replays of pre-made batches: {(time.perf_counter()-t)/len(gpu_batches)*1000:.3f} ms/step")
sched = optim.Schedule(opt, "linear", 500, 10000)
t = time.perf_counter()
for _, b in data.iterate_batches(ds, batches, 0, dev, **train.GRAPH_LAYOUTS['packed']):
    step(b).clone(); sched.step()
torch.cuda.synchronize(); print(f"collate + replay + schedule: {(time.perf_counter()-t)/len(batches)*1000:.3f} ms/step")
lens = [b["input"].shape[1] for b in gpu_batches]; cnt = [len(b["positions"]) for b in gpu_batches]
print(f"mean padded length {sum(lens)/len(lens):.1f}, mean loss positions padded {sum(cnt)/len(cnt):.1f}")
