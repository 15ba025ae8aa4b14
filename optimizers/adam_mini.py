"""Adam-mini (Zhang et al. 2024, arXiv 2406.16793) through the official `adam-mini` 1.1.1 package.

Adam-mini keeps one second-moment value per block instead of per entry: per head for queries and
keys, per output neuron for values, attention output, MLP, embedding and output weights, per
tensor for norms; biases keep full Adam. The package finds the blocks by substrings of parameter
names. We do not rely on the model's names: each parameter is handed over under a name made from
its `ModelInfo` role (`wq.3`, `mlp.7`, ...), and the package's name sets are replaced by exactly
those role keywords, so every block is classified (and its warnings have nothing to warn about).
`verbose=False` only drops the package's per-parameter listing.

Models without attention (the RL and time-series networks; `model_info.n_heads` is None and no
attn_* roles): the documented partition is by tensor rank, as `roles_by_rank` gives it: 2-D
weights (role `mlp`) get one second moment per output neuron, 1-D tensors (role `bias`) full
Adam. An attention model without `n_heads` is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from adam_mini import Adam_mini

from spam_bench.optimizers.roles import checked_roles, is_attention_model
from spam_bench.suite.config import param
from spam_bench.suite.errors import NotApplicable
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.search_space import Dist

# role -> the keyword Adam-mini's name sets match; 'norm'/'other' fall to its per-tensor branch.
KEYWORD = {
    "embedding": "embd",
    "output": "output",
    "attn_q": "wq",
    "attn_k": "wk",
    "attn_v": "wv",
    "attn_o": "wo",
    "mlp": "mlp",
    "bias": "bias",
    "norm": "norm",
    "other": "blk",
}
# Adam-mini's block kind for each keyword, for checks and the conformance kit.
BLOCK = {
    "embd": "neuron",
    "output": "neuron",
    "wq": "head",
    "wk": "head",
    "wv": "neuron",
    "wo": "neuron",
    "mlp": "neuron",
    "bias": "adam",
    "norm": "tensor",
    "blk": "tensor",
}


class AdamMini(Adam_mini):
    """The official optimizer, with name sets that are exactly our role keywords."""

    def __init__(self, named_roles: list[tuple[str, torch.nn.Parameter, str]], **kw: Any):
        super().__init__([(f"{KEYWORD[r]}.{i}", p) for i, (_, p, r) in enumerate(named_roles)], verbose=False, **kw)
        self.embd_names, self.output_names = {"embd"}, {"output"}
        self.wqk_names, self.wv_names, self.attn_proj_names = {"wq", "wk"}, {"wv"}, {"wo"}
        self.mlp_names, self.adam_block_names = {"mlp"}, {"bias"}
        self.block_of = {name: BLOCK[KEYWORD[r]] for name, _, r in named_roles}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # The package needs a `name` per group; a group added later is named from its `role`
        # key, or by tensor rank (the no-attention partition) when it has none.
        if "name" not in param_group:
            params = param_group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            if len(params) != 1:
                raise ValueError("Adam-mini: add one parameter per param group (its blocks are per tensor)")
            role = param_group.pop("role", "mlp" if params[0].ndim == 2 else "bias")
            param_group = {**param_group, "params": params, "name": f"{KEYWORD[role]}.new{len(self.param_groups)}"}
            param_group.setdefault("weight_decay", self.defaults.get("weight_decay", 0.0))
        super().add_param_group(param_group)


@dataclass
class AdamMiniConfig:
    beta1: float = param(0.9, "First-moment decay.", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay (per block).", ge=0.0, lt=1.0)
    eps: float = param(1e-8, "Denominator epsilon (package default).", gt=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay (not on norms and biases, as the package does).", ge=0.0)


def make(
    model: torch.nn.Module,
    model_info: ModelInfo,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> AdamMini:
    named = checked_roles(model, model_info, "adam_mini")
    deep = [n for n, p, _ in named if p.ndim > 2]
    if deep:
        # The package partitions matrices into per-neuron rows; a conv kernel (out, in, kh, kw) has no
        # partition it knows, and reshaping it fails inside the package's step.
        raise NotApplicable(
            f"adam_mini partitions 2-D weights by heads and neurons; {len(deep)} weights here "
            f"have more dimensions (e.g. {deep[0]})"
        )
    if is_attention_model(model_info):
        if model_info.n_heads is None or model_info.hidden_size is None:
            raise ValueError(
                "adam_mini: an attention model needs model_info.hidden_size and n_heads "
                "(Adam-mini keeps one second moment per query/key head)"
            )
        dim, heads, kv = model_info.hidden_size, model_info.n_heads, model_info.n_kv_heads
    else:  # no q/k blocks: dim and heads are never used, the partition is by tensor rank
        dim, heads, kv = 1, 1, None
    return AdamMini(
        named, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, dim=dim, n_heads=heads, n_kv_heads=kv
    )


SPEC = OptimizerSpec(
    name="adam_mini",
    factory=make,
    config_cls=AdamMiniConfig,
    description="Adam-mini (official package): one second moment per head/neuron/tensor block",
    reference="adam-mini 1.1.1 (Zhang et al. 2024, arXiv 2406.16793)",
    needs_roles=True,
    sparse_state=True,
    search_space={"lr": Dist(1e-4, 1e-2, log=True), "opt.beta2": Dist(0.95, 0.999)},
    libraries=("adam-mini",),
)
