"""transformers' GPT2LMHeadModel as an independent oracle for our GPT-2 (eager attention, no dropout)."""

import torch
from transformers import GPT2Config as HubConfig
from transformers import GPT2LMHeadModel


def hub_config(config):
    hub = HubConfig(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                    n_layer=config.n_layer, n_head=config.n_head, layer_norm_epsilon=config.layer_norm_epsilon,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                    bos_token_id=None, eos_token_id=None)
    hub._attn_implementation = "eager"  # the plain softmax(QK^T/sqrt(d))V, not the SDPA we use
    return hub


def hub_twin(model):
    """A transformers GPT-2 holding our base weights (LoRA tensors, if any, are not part of it)."""
    twin = GPT2LMHeadModel(hub_config(model.config)).eval()
    state = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    result = twin.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys in ([], ["lm_head.weight"])
    twin.tie_weights()
    assert torch.equal(twin.lm_head.weight, model.transformer.wte.weight)
    return twin


def randomize(model, seed=0, scale=0.3):
    """Weights large enough that any slip in the arithmetic shows far above 1e-4 (init's 0.02 hides a lot)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "ln_" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(scale * noise)
    return model


def hub_logits(twin, ids):
    with torch.no_grad():
        return twin(torch.as_tensor([ids])).logits[0]
