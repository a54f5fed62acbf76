"""The GPT-2 model cards: the sizes the commands' --model_card names (SPEC 3), kept free of torch so that
--help answers at once."""

CARDS = {
    "gpt2.sm": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2.md": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2.lg": dict(n_embd=1280, n_layer=36, n_head=20),
    # Small cards of our own: tests (tiny) and the offline CPU demo (mini), trained from scratch.
    "gpt2.tiny": dict(n_embd=64, n_layer=2, n_head=4),
    "gpt2.mini": dict(n_embd=256, n_layer=4, n_head=4),
}
