"""Mistral = Llama + sliding-window attention: a token sees at most `sliding_window` tokens (itself included).

Only the masking rule differs, so only the two mask methods are overridden.
"""
from .llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    def allowed_positions(self, q_pos, k_pos):
        allowed = super().allowed_positions(q_pos, k_pos)
        if self.config.sliding_window is not None:
            allowed = allowed & (q_pos - k_pos < self.config.sliding_window)
        return allowed

    def plain_causal_suffices(self, total_len: int) -> bool:
        window = self.config.sliding_window
        return window is None or total_len <= window
