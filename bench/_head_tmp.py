import torch, torch.nn.functional as F
def t(fn, n=20):
    fn(); torch.cuda.synchronize()
    s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True); s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize(); return s.elapsed_time(e)/n
for M in (1280, 640, 256):
    h=torch.randn(M,1024,device='cuda',dtype=torch.bfloat16); W=torch.randn(50304,1024,device='cuda',dtype=torch.bfloat16)
    Wt=W.t().contiguous(); h3=h.view(M//10 if M%10==0 else M, -1, 1024)
    g=torch.randn(M,50304,device='cuda',dtype=torch.bfloat16)
    z=torch.zeros(50304,device='cuda',dtype=torch.bfloat16)
    r={'linear2d':t(lambda: F.linear(h,W)),'linear3d':t(lambda: F.linear(h3,W)),'mm(h,Wt)':t(lambda: h@Wt),'addmm zero bias':t(lambda: F.linear(h,W,z)),
       'bwd g@W':t(lambda: g@W), 'bwd (W^T g^T)^T':t(lambda: (Wt@g.t()).t())}
    fl=2*M*1024*50304
    print(M, ' | '.join(f'{k} {v*1000:.0f}us {fl/v/1e9:.0f}TF' for k,v in r.items()))
