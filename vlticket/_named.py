"""Turning a module or a mapping into named tensors, and checking two layouts agree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, Union, runtime_checkable

import torch
from torch import nn

from .errors import ArgumentError, NameMismatchError, ShapeMismatchError

Weights = Union[nn.Module, Mapping[str, torch.Tensor]]  # noqa: UP007 (runtime alias, py3.10)


@runtime_checkable
class NameMap(Protocol):
    """What an adapter offers the core: the prunable tensors of a model under stable names."""

    def prunable(self, model: nn.Module) -> Mapping[str, torch.Tensor]: ...


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``).

    Masks and checkpoints are keyed by the inner model's names, so they move between a wrapped
    training model and the plain one.
    """
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the (unwrapped) model, as the live tensors.

    What a full rewind copies: ``Checkpoint.capture(model_state(m))`` snapshots the task head and
    batch-norm statistics too, and ``ckpt.restore(model_state(m))`` writes into the model itself.
    """
    return dict(unwrap(module).state_dict(keep_vars=True))


def default_prunable(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every floating-point parameter with two or more dimensions (weight matrices, kernels)."""
    params = unwrap(module).named_parameters()
    return {name: p for name, p in params if p.is_floating_point() and p.dim() >= 2}


def resolve_adapter(adapter: Any) -> NameMap | None:
    """An adapter object, or a registered adapter's name such as ``"vilt"``."""
    if adapter is None or isinstance(adapter, NameMap):
        return adapter
    if isinstance(adapter, str):
        from .adapters import get

        return get(adapter)
    raise ArgumentError(
        f"`adapter`: expected an adapter (with a `prunable(model)` method) or a registered "
        f"adapter name, found {type(adapter).__name__}"
    )


def named_tensors(
    source: Any, *, adapter: NameMap | None = None, param: str = "weights"
) -> dict[str, torch.Tensor]:
    """Named tensors of ``source``: an adapter's view, all module parameters, or a mapping."""
    adapter = resolve_adapter(adapter)
    if adapter is not None:
        if not isinstance(source, nn.Module):
            raise ArgumentError(
                f"`{param}`: an adapter needs an nn.Module, found {type(source).__name__}"
            )
        return dict(adapter.prunable(unwrap(source)))
    if isinstance(source, nn.Module):
        return dict(unwrap(source).named_parameters())
    if isinstance(source, Mapping):
        out = {}
        for name, t in source.items():
            if not isinstance(name, str):
                raise ArgumentError(f"`{param}`: names must be str, found {name!r}")
            if not isinstance(t, torch.Tensor):
                raise ArgumentError(
                    f"`{param}[{name!r}]`: expected a torch.Tensor, found {type(t).__name__}"
                )
            out[name] = t
        return out
    raise ArgumentError(
        f"`{param}`: expected an nn.Module or a mapping of name to tensor, "
        f"found {type(source).__name__}"
    )


def _preview(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_names(
    expected: Iterable[str], found: Iterable[str], *, what: str, where: str, exact: bool = True
) -> None:
    """Raise NameMismatchError unless ``found`` has every expected name (and no other if exact)."""
    expected, found = set(expected), set(found)
    missing = expected - found
    extra = found - expected if exact else set()
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from {where}: {_preview(missing)}")
        if extra:
            parts.append(f"not in {what}: {_preview(extra)}")
        raise NameMismatchError(f"{what} and {where} do not match; " + "; ".join(parts))


def check_shapes(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    found: Mapping[str, torch.Tensor],
    *,
    what: str,
    where: str,
) -> None:
    """Raise ShapeMismatchError naming the first tensor whose shape differs."""
    for name, shape in expected.items():
        got = tuple(found[name].shape)
        if tuple(shape) != got:
            raise ShapeMismatchError(
                f"tensor {name!r}: {what} has shape {tuple(shape)}, {where} has shape {got}"
            )


def check_layout(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    found: Mapping[str, torch.Tensor],
    *,
    what: str,
    where: str,
    exact: bool = True,
) -> None:
    """Names then shapes: the check every in-place operation runs before touching anything."""
    check_names(expected, found, what=what, where=where, exact=exact)
    check_shapes(expected, found, what=what, where=where)
