"""A LLaMA decoder (RMSNorm, RoPE, SwiGLU, untied lm_head), shaped like the one the paper trains.

Module names follow HF LLaMA (embed_tokens, q_proj, ..., down_proj, lm_head) so that external
optimizers that classify parameters by name (Adam-mini) see what they expect; our own code uses
`model_info()` roles instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spam_bench.suite.model_info import ModelInfo


@dataclass(frozen=True)
class LlamaShape:
    """The architecture hyperparameters (the paper's `configs/llama_*.json`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_layers: int
    max_seq_len: int
    n_kv_heads: int | None = None
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as HF LLaMA does, so bf16 models keep a stable norm.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.n_heads, self.n_kv = shape.n_heads, shape.kv_heads
        self.head_dim = shape.hidden_size // shape.n_heads
        h = shape.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # RoPE on the projections' own (b, t, heads, dim) layout, then the (b, heads, t, dim) view
        # attention wants: the same arithmetic per entry (so the same numbers), on contiguous memory
        # rather than through a transposed view, which made RoPE a tenth of a tiny CPU step.
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (t, 1, dim): broadcast over heads
        q = apply_rope(self.q_proj(x).view(b, t, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(b, t, self.n_kv, self.head_dim), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        # Right padding plus a causal mask means real tokens never attend to pads: no extra mask.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_eps)
        self.self_attn = Attention(shape)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_eps)
        self.mlp = MLP(shape)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, shape: LlamaShape):
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_eps)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        cos, sin = rope_tables(shape.hidden_size // shape.n_heads, shape.max_seq_len, shape.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # HF LLaMA's initializer_range 0.02, which the paper's GaLore-derived code inherits.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        cos = self.rope_cos[:t].to(x.dtype)
        sin = self.rope_sin[:t].to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over labelled positions (labels == -100 are ignored)."""
        logits = self(input_ids)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            roles={name: parameter_role(name) for name, _ in self.named_parameters()},
            hidden_size=self.shape.hidden_size,
            n_heads=self.shape.n_heads,
            n_kv_heads=self.shape.kv_heads,
        )


_ROLE_BY_MODULE = {
    "embed_tokens": "embedding",
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_o",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
    "lm_head": "output",
}


def parameter_role(name: str) -> str:
    module = name.rsplit(".", 2)[-2] if "." in name else name
    if module in _ROLE_BY_MODULE:
        return _ROLE_BY_MODULE[module]
    if module.endswith("norm"):
        return "norm"
    return "bias" if name.endswith(".bias") else "other"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
