"""Low-rank adapters (LoRA, Hu et al., arXiv:2106.09685) on the attention projections of a diffusers UNet.

The VSD guidance fine-tunes a frozen Stable Diffusion UNet through rank-4 LoRA on ``to_q``, ``to_k``, ``to_v`` and
``to_out.0`` of every attention module, as 4D-fy did with diffusers 0.24's ``LoRAAttnProcessor``. That class is an
empty stub in current diffusers and PEFT is not a dependency, so the adapters are implemented here, at the level of
the linear layers (the attention processors call ``attn.to_q(...)`` etc., so any processor works unchanged,
including the sliced one).

Ownership is split on purpose:

- the UNet keeps its frozen base weights under their usual names (``...attn1.to_q.weight``) and only *references*
  its adapters, so ``unet.state_dict()`` stays exactly the pretrained checkpoint's and ``unet.parameters()`` holds
  no trainable tensor;
- a separate :class:`LoRALayers` container owns every adapter, laid out like the UNet, so the trainable tensors
  have deterministic, readable state-dict keys ``<attention path>.<projection>.lora_down`` / ``.lora_up``, e.g.
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_up``.

The LoRA strength is an attribute of the adapters, set with :meth:`LoRALayers.scaled`. Passing
``cross_attention_kwargs={"scale": s}`` to a diffusers >= 0.2x UNet without PEFT does nothing (the key is popped
with a warning), so that route is not used.

Parameter count: rank 4 on the full Stable Diffusion 2.x UNet (32 attention modules, 128 projections) is
829,952 trainable values (see ``tests/guidance/test_lora.py``).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""Projections of each attention module that get an adapter (4D-fy / diffusers 0.24 ``LoRAAttnProcessor``)."""


def lora_delta(
    x: Float[Tensor, "*batch d_in"], down: Float[Tensor, "r d_in"], up: Float[Tensor, "d_out r"]
) -> Float[Tensor, "*batch d_out"]:
    """The low-rank update ``up @ down @ x``.

    It is computed in the adapter's dtype (fp32 next to a bf16 UNet, so small updates are not rounded away) and
    returned in the dtype of ``x``.
    """
    h = F.linear(F.linear(x.to(down.dtype), down), up)
    return h.to(x.dtype)


class LoRAAdapter(nn.Module):
    """The trainable half of one LoRA layer.

    ``lora_down`` [rank, in] starts as N(0, (1/rank)^2) (std ``1/rank``, diffusers 0.24's ``LoRALinearLayer`` init)
    and ``lora_up`` [out, rank] starts at zero, so the adapted layer initially equals the base layer. Parameters are
    fp32 whatever the base layer's dtype.

    Attributes:
        scale: multiplier of the update (1.0 by default; see :meth:`LoRALayers.scaled`).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, device: torch.device | None = None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank: must be in [1, {min(in_features, out_features)}] for a {in_features}->"
                             f"{out_features} layer, got {rank}")  # fmt: skip
        self.rank = rank
        self.lora_down = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=torch.float32))
        self.lora_up = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=torch.float32))
        nn.init.normal_(self.lora_down, std=1.0 / rank)
        self.scale = 1.0

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """The unscaled update ``up(down(x))`` in the dtype of ``x``."""
        return lora_delta(x, self.lora_down, self.lora_up)

    def extra_repr(self) -> str:
        return f"in={self.lora_down.shape[1]}, out={self.lora_up.shape[0]}, rank={self.rank}, scale={self.scale}"


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a low-rank update: ``y = W x + b + scale * up(down(x))``.

    It *is* an ``nn.Linear`` holding the very same ``weight``/``bias`` parameters as the layer it replaces (so the
    state-dict keys and values of the model do not change), with ``requires_grad`` off. The adapter is referenced,
    not registered as a submodule: whoever owns it (a :class:`LoRALayers`) saves, moves and optimises it. With
    ``scale == 0`` the update is skipped and the output is exactly the base layer's.
    """

    def __init__(self, base: nn.Linear, adapter: LoRAAdapter) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: the parameters are taken over, not allocated
        if isinstance(base, LoRALinear):
            raise ValueError("base: this layer already carries a LoRA adapter")
        if tuple(adapter.lora_down.shape[1:]) != (base.in_features,) or adapter.lora_up.shape[0] != base.out_features:
            raise ValueError(
                f"adapter: shapes down {tuple(adapter.lora_down.shape)} / up {tuple(adapter.lora_up.shape)} do not "
                f"fit a {base.in_features}->{base.out_features} linear layer"
            )
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad_(False)
        # object.__setattr__ bypasses nn.Module registration: the adapter must not appear in this model's
        # parameters() / state_dict() (it is trained and checkpointed through its owner)
        object.__setattr__(self, "adapter", adapter)

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        out = F.linear(x, self.weight, self.bias)
        scale = self.adapter.scale
        if scale == 0.0:
            return out
        return out + scale * self.adapter(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_rank={self.adapter.rank}, lora_scale={self.adapter.scale}"


class LoRALayers(nn.Module):
    """Owner of the adapters of one model, nested like the model so state-dict keys read
    ``<module path>.lora_down`` / ``<module path>.lora_up``."""

    def add(self, path: str, adapter: LoRAAdapter) -> None:
        """Register ``adapter`` under the dotted module path ``path`` (creating the intermediate containers)."""
        parts = path.split(".")
        node: nn.Module = self
        for part in parts[:-1]:
            if part not in node._modules:
                node.add_module(part, nn.ModuleDict())
            node = node._modules[part]
        if parts[-1] in node._modules:
            raise ValueError(f"path: an adapter is already registered at {path!r}")
        node.add_module(parts[-1], adapter)

    def adapters(self) -> dict[str, LoRAAdapter]:
        """All adapters by module path, in registration order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, LoRAAdapter)}

    def set_scale(self, scale: float) -> None:
        """Set the update multiplier of every adapter."""
        for adapter in self.adapters().values():
            adapter.scale = float(scale)

    @contextmanager
    def scaled(self, scale: float) -> Iterator[None]:
        """Run a block with every adapter at ``scale`` (0 reproduces the base model), then restore the previous
        scales (also on error)."""
        previous = [(a, a.scale) for a in self.adapters().values()]
        self.set_scale(scale)
        try:
            yield
        finally:
            for adapter, value in previous:
                adapter.scale = value


def inject_lora(model: nn.Module, rank: int = 4, targets: tuple[str, ...] = LORA_TARGETS) -> LoRALayers:
    """Wrap the projections ``targets`` of every diffusers ``Attention`` module of ``model`` with
    :class:`LoRALinear`.

    The base weights are frozen; the new adapters (fp32, on the base weights' device, initialised from the global
    torch RNG) are returned in a :class:`LoRALayers` keyed by the wrapped layers' module paths. The model must not
    already carry adapters.

    Args:
        model: typically a ``diffusers.UNet2DConditionModel``.
        rank: LoRA rank (4D-fy: 4).
        targets: projection paths inside each attention module.

    Returns:
        The container owning the adapters (register it on the owning module to train and checkpoint them).

    Example:
        >>> layers = inject_lora(unet, rank=4)
        >>> with layers.scaled(0.0):
        ...     base_out = unet(z_t, t, text).sample   # LoRA switched off
    """
    from diffusers.models.attention_processor import Attention

    attention_paths = [name for name, m in model.named_modules() if isinstance(m, Attention)]
    if not attention_paths:
        raise ValueError(f"model: {type(model).__name__} has no diffusers Attention module to put LoRA on")
    layers = LoRALayers()
    for attn_path in attention_paths:
        attn = model.get_submodule(attn_path)
        for target in targets:
            parent_path, _, leaf = target.rpartition(".")
            parent = attn.get_submodule(parent_path) if parent_path else attn
            base = parent._modules.get(leaf)
            if not isinstance(base, nn.Linear):
                raise ValueError(f"targets: {attn_path}.{target} is {type(base).__name__}, not a linear layer")
            if isinstance(base, LoRALinear):
                raise ValueError(f"model: {attn_path}.{target} already carries a LoRA adapter (inject_lora twice?)")
            adapter = LoRAAdapter(base.in_features, base.out_features, rank, device=base.weight.device)
            parent.add_module(leaf, LoRALinear(base, adapter))
            layers.add(f"{attn_path}.{target}", adapter)
    return layers
