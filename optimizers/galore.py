"""GaLore-AdamW (Zhao et al. 2024, arXiv 2403.03507): Adam moments in a low-rank gradient subspace.

Our own projector, following the official `galore_torch` (GaLoreProjector, type "std") exactly:
for a 2-D attention/MLP weight W (m x n) with gradient G, every `update_proj_gap` steps of that
parameter (its steps 0, T, 2T, ...) a truncated SVD of G (in float32) gives the projector:

- m >= n: P = V_r^T (r x n), the top-r right singular vectors; R = G P^T (m x r); back: N P.
- m <  n: P = U_r   (m x r), the top-r left singular vectors;  R = P^T G (r x n); back: P N.

Adam runs on R (moments of R's shape, not reset when P changes, as official), and the update is
`scale * back(m̂ / (sqrt(v̂) + eps))`. Weight decay is decoupled, after the update (official).

Why not pytorch_optimizer's GaLore: it keeps the projector inside a Python object in the state,
so `state_dict` cannot be saved with `weights_only` loading, and the projector's bytes are
invisible to an analytic count of the optimizer state. Here P is a tensor in `state["projector"]`.

SVD failure (LinAlgError on an ill-conditioned or non-finite gradient) must not kill a long run:
we retry in float64, then keep the previous projector; at a parameter's first step there is no
previous one, so we use a seeded random orthonormal basis (QR of a Gaussian matrix). Each fallback
is counted in `svd_fallbacks` and warned about once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from spam_bench.optimizers.roles import checked_roles
from spam_bench.suite.config import param
from spam_bench.suite.errors import NotApplicable
from spam_bench.suite.model_info import MATRIX_ROLES, ModelInfo
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.search_space import Dist

# The paper's memory-matched ranks by model width: 60M (512) 128, 130M (768) 256, 350M (1024) 256,
# 1B (2048) 512 (GaLore paper Table 2; docs/spam.md#matched-density). Other widths: hidden/4, the rule of three of them.
PAPER_RANKS = {512: 128, 768: 256, 1024: 256, 2048: 512}
PAPER_SCALE_RANKS = {"paper-60m": 128, "paper-130m": 256, "paper-350m": 256, "paper-1b": 512}


def paper_rank(hidden_size: int) -> int:
    """The memory-matched GaLore rank the paper uses at this model width (hidden/4 off the table)."""
    return PAPER_RANKS.get(hidden_size, max(1, hidden_size // 4))


def resolve_rank(rank: int | None, model_info: ModelInfo, shapes: list[tuple[int, int]]) -> int:
    if rank is not None:
        return rank
    if model_info.hidden_size is not None:
        return paper_rank(model_info.hidden_size)
    return max(1, min((min(s) for s in shapes), default=4) // 4)


def state_numel(m: int, n: int, rank: int) -> int:
    """GaLore's state for one m x n weight: projector min(m,n)·r plus two r·max(m,n) moments."""
    r = min(rank, m, n)
    return r * min(m, n) + 2 * r * max(m, n)


def project(grad: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    return grad @ proj.t() if grad.shape[0] >= grad.shape[1] else proj.t() @ grad


def project_back(low: torch.Tensor, proj: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return low @ proj if shape[0] >= shape[1] else proj @ low


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW; 2-D params in groups with a `rank` key get their gradients projected (see module doc)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        fallback_seed: int = 0,
    ):
        if not (lr >= 0 and eps >= 0 and weight_decay >= 0 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"GaLoreAdamW: invalid lr/betas/eps/weight_decay {lr}, {betas}, {eps}, {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        if rank is not None:  # projected by default only when asked; per-group keys otherwise
            defaults.update(rank=rank, update_proj_gap=update_proj_gap, scale=scale)
        self.fallback_seed = fallback_seed
        self.svd_fallbacks = 0
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "rank" in group:
            group.setdefault("update_proj_gap", 200)
            group.setdefault("scale", 0.25)
            if not (isinstance(group["rank"], int) and group["rank"] >= 1 and group["update_proj_gap"] >= 1):
                raise ValueError(
                    f"GaLoreAdamW: rank and update_proj_gap must be integers >= 1, got "
                    f"{group['rank']!r}, {group['update_proj_gap']!r}"
                )

    def _projector(self, grad: torch.Tensor, rank: int, previous: torch.Tensor | None) -> torch.Tensor:
        """The top-`rank` singular vectors of `grad` on its shorter side, in grad's dtype (official)."""
        m, n = grad.shape
        r = min(rank, m, n)
        for dtype in (torch.float32, torch.float64):
            try:
                u, _, vh = torch.linalg.svd(grad.to(dtype), full_matrices=False)
                if not (torch.isfinite(u).all() and torch.isfinite(vh).all()):
                    raise torch.linalg.LinAlgError("non-finite singular vectors")
                # clone: a slice would keep the whole U or V^T alive (and uncounted) in the state
                return (vh[:r] if m >= n else u[:, :r]).to(grad.dtype).clone(memory_format=torch.contiguous_format)
            except torch.linalg.LinAlgError:  # not RuntimeError: an out-of-memory must still surface
                continue
        self.svd_fallbacks += 1
        if self.svd_fallbacks == 1:
            warnings.warn(
                "GaLore: SVD of a gradient failed; keeping the previous projector "
                "(or a random orthonormal one at the first step). Counted in svd_fallbacks.",
                RuntimeWarning,
                stacklevel=3,
            )
        if previous is not None:
            return previous
        gen = torch.Generator().manual_seed(self.fallback_seed + m * 7919 + n)
        q, _ = torch.linalg.qr(torch.randn(min(m, n), r, generator=gen, dtype=torch.float64))
        q = q.to(device=grad.device, dtype=grad.dtype)
        return q.t().contiguous() if m >= n else q.contiguous()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                state = self.state[p]
                grad = p.grad
                if "step" not in state:
                    state["step"] = 0
                low_rank = "rank" in group and p.ndim == 2
                if low_rank:
                    if state["step"] % group["update_proj_gap"] == 0:
                        state["projector"] = self._projector(grad, group["rank"], state.get("projector"))
                    grad = project(grad, state["projector"])
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
                state["step"] += 1
                k = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr * math.sqrt(1 - beta2**k) / (1 - beta1**k)
                update = m / v.sqrt().add_(eps)
                if low_rank:
                    update = project_back(update, state["projector"], p.shape).mul_(group["scale"])
                p.add_(update, alpha=-step_size)
                if wd > 0:
                    p.add_(p, alpha=-lr * wd)
        return loss


@dataclass
class GaLoreConfig:
    rank: int | None = param(
        None,
        "Projection rank r; None = the paper's memory-matched rank for the model width "
        "(128 at 60M, 256 at 130M/350M, 512 at 1B; hidden/4 otherwise).",
        ge=1,
    )
    update_proj_gap: int = param(200, "T: recompute the SVD projector every T steps of each weight (paper: 200).", ge=1)
    scale: float = param(0.25, "α: the low-rank update is multiplied by α (paper: 0.25).", gt=0.0)
    beta1: float = param(0.9, "First-moment decay.", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay.", ge=0.0, lt=1.0)
    eps: float = param(1e-6, "Denominator epsilon (official GaLore AdamW: 1e-6).", gt=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay after the update; 0 in the paper's runs.", ge=0.0)


def make(
    model: torch.nn.Module,
    model_info: ModelInfo,
    *,
    lr: float,
    rank: int | None = None,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
) -> GaLoreAdamW:
    """GaLore on the 2-D attention/MLP weights (by role); AdamW on everything else (embeddings, lm_head, norms)."""
    named = checked_roles(model, model_info, "galore")
    low = [p for _, p, r in named if r in MATRIX_ROLES and p.ndim == 2]
    dense = [p for _, p, r in named if not (r in MATRIX_ROLES and p.ndim == 2)]
    if not low:
        raise NotApplicable(
            "galore: the model has no 2-D attention/MLP weights (roles attn_*/mlp) to project; it would be plain AdamW"
        )
    r = resolve_rank(rank, model_info, [tuple(p.shape) for p in low])
    groups = [
        g
        for g in ({"params": dense}, {"params": low, "rank": r, "update_proj_gap": update_proj_gap, "scale": scale})
        if g["params"]
    ]
    return GaLoreAdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def paper_preset(scale_name: str) -> dict[str, Any]:
    """`--set` values of the paper's memory-matched GaLore run at a scale, e.g. `paper_preset('paper-60m')`."""
    return {"opt.rank": PAPER_SCALE_RANKS[scale_name], "opt.update_proj_gap": 200, "opt.scale": 0.25}


SPEC = OptimizerSpec(
    name="galore",
    factory=make,
    config_cls=GaLoreConfig,
    description="GaLore-AdamW: low-rank projected Adam on attention/MLP matrices",
    reference="Zhao et al. 2024 arXiv 2403.03507; official galore_torch GaLoreProjector 'std' semantics",
    needs_roles=True,
    sparse_state=True,
    search_space={"lr": Dist(1e-4, 3e-2, log=True), "opt.scale": Dist(0.125, 1.0, log=True)},
)
