"""An optimizer's state as named tensors (for safetensors) and back, for any parameter groups.

A state entry is keyed ``<parameter name>::<state key>`` (``exp_avg``, ``exp_avg_sq``,
``step``), so a checkpoint reads back into a model whose parameters are named alike, in
whatever order its parameter groups list them.
"""

from __future__ import annotations

import torch


def _names_in_group_order(opt: torch.optim.Optimizer, model: torch.nn.Module) -> list[str]:
    """The parameter names in the optimizer's own index order (its groups, one after another)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


def optimizer_tensors(opt: torch.optim.Optimizer, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """(named state tensors, JSON-able param_groups) of ``opt``."""
    names = _names_in_group_order(opt, model)
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"{names[idx]}::{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1).clone() \
                if key == "step" else value.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def load_optimizer_tensors(opt: torch.optim.Optimizer, model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                           param_groups: list, device: torch.device | str = "cpu") -> None:
    """Restore ``opt`` from :func:`optimizer_tensors`' output."""
    state: dict[int, dict] = {}
    for idx, name in enumerate(_names_in_group_order(opt, model)):
        keys = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == name}
        if keys:
            state[idx] = {k: (v.reshape(()) if k == "step" else v.to(device)) for k, v in keys.items()}
    opt.load_state_dict({"state": state, "param_groups": param_groups})
