"""Turning a module or a mapping into named tensors, and checking two layouts agree."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Union

import torch
from torch import nn

from .errors import ArgumentError, NameMismatchError, ShapeMismatchError, VlticketError
from .registry import Naming, detect, is_family, resolve

logger = logging.getLogger("vlticket")


class _Auto:
    """The default ``adapter=`` of functions that choose weights: the model's family adapter if
    exactly one registered family fits, else every 2-D+ float parameter."""

    def __repr__(self) -> str:
        return "'auto'"


AUTO: Any = _Auto()
Weights = Union[nn.Module, Mapping[str, torch.Tensor]]  # noqa: UP007 (runtime alias, py3.10)
AdapterArg = Union[Naming, str, None, _Auto]  # noqa: UP007 (runtime alias, py3.10)
_announced: set[str] = set()


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


def named_tensors(
    source: Any, *, adapter: AdapterArg = None, param: str = "weights"
) -> dict[str, torch.Tensor]:
    """Named tensors of ``source``: an adapter's view, all module parameters, or a mapping."""
    adapter = resolve(adapter)
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


def auto_adapter(weights: Any, adapter: AdapterArg) -> Naming | None:
    """``adapter`` resolved; :data:`AUTO` becomes the family adapter of a module whose names
    fit exactly one registered family (announced once per family), else ``None``.

    A mapping is never auto-adapted: its names are already the ones the user chose.
    """
    if adapter is not AUTO:
        return resolve(adapter)
    if not isinstance(weights, nn.Module):
        return None
    found = detect(n for n, _ in unwrap(weights).named_parameters())
    if found is None or not is_family(found):
        return None
    if found.name not in _announced:
        _announced.add(found.name)
        logger.info(
            "vlticket: pruning the %r adapter's prunable set; pass adapter=None for every 2-D "
            "float parameter",
            found.name,
        )
    return found


def prunable_tensors(
    weights: Any, *, adapter: AdapterArg = None, param: str = "weights"
) -> dict[str, torch.Tensor]:
    """The tensors a mask covers by default: the adapter's prunable set, every floating-point
    parameter with two or more dimensions of a module, or every tensor of a mapping.

    Raises ArgumentError when that set is empty: a mask over nothing is never what was meant.
    """
    adapter = auto_adapter(weights, adapter)
    if adapter is None and isinstance(weights, nn.Module):
        tensors = default_prunable(weights)
        what = "has no floating-point parameter with two or more dimensions"
    else:
        tensors = named_tensors(weights, adapter=adapter, param=param)
        what = "gives no tensor" if adapter is None else f"has no prunable weight for {adapter!r}"
    if not tensors:
        raise ArgumentError(
            f"`{param}` {what}: nothing to prune (build an empty mask explicitly with Mask({{}}))"
        )
    return tensors


def preview(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_names(
    expected: Iterable[str],
    found: Iterable[str],
    *,
    what: str,
    where: str,
    exact: bool = True,
    error: type[VlticketError] = NameMismatchError,
) -> None:
    """Raise ``error`` unless ``found`` has every expected name (and no other if exact)."""
    expected, found = set(expected), set(found)
    missing = expected - found
    extra = found - expected if exact else set()
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from {where}: {preview(missing)}")
        if extra:
            parts.append(f"not in {what}: {preview(extra)}")
        raise error(f"{what} and {where} do not match; " + "; ".join(parts))


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def check_shapes(
    expected: Mapping[str, Any],
    found: Mapping[str, Any],
    *,
    what: str,
    where: str,
    error: type[VlticketError] = ShapeMismatchError,
) -> None:
    """Raise ``error`` naming the first tensor whose shape differs (tensors or shapes)."""
    for name, shape in expected.items():
        want, got = _shape(shape), _shape(found[name])
        if want != got:
            raise error(f"tensor {name!r}: {what} has shape {want}, {where} has shape {got}")


def check_layout(
    expected: Mapping[str, Any],
    found: Mapping[str, Any],
    *,
    what: str,
    where: str,
    exact: bool = True,
    error: type[VlticketError] | None = None,
) -> None:
    """Names then shapes: the one check every in-place operation and every loader runs before
    touching anything. Values are tensors or shapes. ``error`` replaces the mismatch classes,
    e.g. with ``FileFormatError`` where a difference means a corrupt file."""
    check_names(
        expected, found, what=what, where=where, exact=exact, error=error or NameMismatchError
    )
    check_shapes(expected, found, what=what, where=where, error=error or ShapeMismatchError)
