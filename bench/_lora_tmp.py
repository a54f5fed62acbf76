import sys, torch, torch.nn.functional as F
sys.path.insert(0, "src"); sys.path.insert(0, "bench")
from loranlg import lora
mode = sys.argv.pop(1)
def forward(self, x):
    out = F.linear(x, self.weight.t(), self.bias)
    if self.r > 0 and not self.merged:
        xd = self.lora_dropout(x)
        B = self.expanded_B()
        if mode == "bsum":
            a = (xd.unsqueeze(-2) * self.lora_A).sum(-1)            # [.., n*r]
            out = out + self.scaling * (a.unsqueeze(-2) * B).sum(-1)  # [.., 3d]
        elif mode == "mm_add":
            a = F.linear(xd, self.lora_A)
            out = out + self.scaling * F.linear(a, B)
    return out
if mode != "base":
    lora.LoRAQKV.forward = forward
import profile_train
profile_train.main()
