import sys, torch
sys.path.insert(0, "src"); sys.path.insert(0, "bench")
mode = sys.argv.pop(1)
from loranlg import loss
if mode == "flash":
    torch.backends.cuda.enable_cudnn_sdp(False)
elif mode == "efficient":
    torch.backends.cuda.enable_cudnn_sdp(False); torch.backends.cuda.enable_flash_sdp(False)
elif mode == "loss_compiled":
    loss.masked_lm_loss = torch.compile(loss.masked_lm_loss, dynamic=True)
import profile_train
profile_train.main()
