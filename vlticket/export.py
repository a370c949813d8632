"""Exporting a ticket for inference: pruned ``nn.Linear`` layers become sparse kernels.

``export(model, mask, to="csr")`` swaps each pruned ``nn.Linear`` whose sparsity reaches
``min_sparsity`` for a :class:`SparseLinear` holding a ``torch.sparse_csr`` weight; on CPU that
beats the dense matmul only at high sparsity (see :data:`CSR_MIN_SPARSITY`), so less sparse
layers stay dense (with their pruned weights zeroed). ``to="2:4"`` swaps them for
:class:`SemiStructuredLinear`, NVIDIA's 2:4 sparse tensor-core format, on a CUDA device.

Only plain ``nn.Linear`` layers that their parent calls are swapped; a subclass, or a Linear
inside ``nn.MultiheadAttention`` / ``nn.Transformer*Layer`` (whose fused paths read the weights
themselves), stays dense with its pruned weights zeroed. Exported modules are for inference
only: nothing in them requires grad, and ``.train()`` raises. Export a copy
(``copy.deepcopy(model)``) to keep training the original.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.sparse import to_sparse_semi_structured

from ._naming import AUTO, AdapterArg, check_layout, named_tensors
from .core import Mask
from .errors import ArgumentError, NameMismatchError, ShapeMismatchError

# The sparsity from which CSR beats the dense matmul on BERT-base Linear shapes at 8 x 128
# tokens and 2 threads on the development CPU (benchmarks/run.py --only export, four quiet
# runs in benchmarks/RESULTS.md: 1.13-1.37x at 0.9, 0.65-0.82x at 0.8): below it, a layer
# stays dense.
CSR_MIN_SPARSITY = 0.9
FORMATS = ("csr", "2:4")
# Modules whose forward reads their child Linears' weights directly (fused fast paths).
_READS_CHILD_WEIGHTS = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
# torch's CPU CSR x dense kernel (MKL) has no float16 / bfloat16 version: such a layer would
# export fine and fail at its first forward, so export refuses it up front.
_CPU_CSR_DTYPES = (torch.float32, torch.float64)


class _InferenceOnly(nn.Module):
    def train(self, mode: bool = True) -> nn.Module:
        if mode:
            raise ArgumentError(
                f"{type(self).__name__} is an inference-only export and cannot train; "
                "train the dense model with `mask.attach(model)` and export it afterwards"
            )
        return super().train(False)


class SparseLinear(_InferenceOnly):
    """``nn.Linear`` with its masked weight stored in CSR form (inference only).

    The CSR arrays are plain buffers (``crow_indices``, ``col_indices``, ``values``), so an
    exported model deep-copies, moves between devices and saves its ``state_dict`` like any
    other (safetensors included); ``weight`` is the ``torch.sparse_csr`` view of them.

    Args:
        linear: the layer to replace; its dtype, device and bias are kept.
        keep: the weight's bool mask (True = kept).
    """

    def __init__(self, linear: nn.Linear, keep: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        with warnings.catch_warnings():  # torch flags CSR as beta at every conversion
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            csr = (w * keep.to(w.device)).to_sparse_csr()
        crow, col = csr.crow_indices(), csr.col_indices()
        if csr.values().numel() < 2**31 and max(w.shape) < 2**31:  # MKL's kernels take int32
            crow, col = crow.int(), col.int()
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("values", csr.values())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.eval()

    @property
    def weight(self) -> torch.Tensor:
        """The masked weight as a ``torch.sparse_csr`` tensor over the buffers (no copy)."""
        return torch.sparse_csr_tensor(
            self.crow_indices,
            self.col_indices,
            self.values,
            (self.out_features, self.in_features),
            check_invariants=False,  # checked when built and when a state dict is loaded
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # torch's CSR kernels trust their indices: an out-of-range one read from a file would
        # read out of bounds at the next forward, so the arrays are checked before the copy.
        arrays = [state_dict.get(prefix + key) for key in ("crow_indices", "col_indices", "values")]
        if all(isinstance(a, torch.Tensor) for a in arrays):
            try:
                torch.sparse_csr_tensor(
                    *arrays, (self.out_features, self.in_features), check_invariants=True
                )
            except RuntimeError as e:
                raise ShapeMismatchError(
                    f"state dict entries {prefix}crow_indices / col_indices / values are not a "
                    f"valid CSR matrix of shape [{self.out_features}, {self.in_features}]: {e}"
                ) from e
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # W @ x^T keeps the sparse operand first, the fast path of torch's CSR kernels, with
        # x^T contiguous and the bias added by the same addmm (measured fastest on CPU).
        if self.values.device.type == "cpu" and self.values.dtype not in _CPU_CSR_DTYPES:
            raise ArgumentError(  # e.g. `.half()` after export: torch would fail less clearly
                f"SparseLinear holds {self.values.dtype} on the CPU, where torch's CSR kernels "
                "take float32 or float64 only; keep an exported model in float32"
            )
        rows = math.prod(x.shape[:-1])  # not -1: a layer with no inputs has 0 elements
        cols = x.reshape(rows, self.in_features).t().contiguous()
        weight = self.weight
        if self.bias is None:
            out = torch.sparse.mm(weight, cols)
        else:
            out = torch.addmm(self.bias.unsqueeze(1), weight, cols)
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.values.numel()
        density = nnz / max(1, self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"density={density:.4f}"
        )


class SemiStructuredLinear(_InferenceOnly):
    """``nn.Linear`` with a 2:4 semi-structured sparse weight on CUDA (inference only)."""

    def __init__(self, linear: nn.Linear, keep: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.weight = nn.Parameter(
            to_sparse_semi_structured(w * keep.to(w.device)), requires_grad=False
        )
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def export(
    model: nn.Module,
    mask: Mask,
    to: str = "csr",
    *,
    min_sparsity: float | None = None,
    adapter: AdapterArg = AUTO,
) -> nn.Module:
    """Swap the pruned ``nn.Linear`` layers of ``model`` for sparse inference modules, in place.

    Every masked tensor must be the weight of an ``nn.Linear``; everything is checked before
    the model changes. Outputs equal the masked dense model's up to float rounding: a Linear
    used in several places is swapped in all of them, and a weight tied to another module
    (an embedding) is masked there too.

    Args:
        model: the model (modified in place and returned; a model that is itself an
            ``nn.Linear`` cannot change class in place, so its replacement is returned).
        mask: the ticket's mask, by parameter names or ``adapter``'s names.
        to: ``"csr"`` (``torch.sparse_csr``; on a CPU float32 or float64 only, torch having
            no half-precision CSR kernel there) or ``"2:4"`` (CUDA; the mask must satisfy the
            2:4 pattern, see ``prune_magnitude(..., pattern="2:4")``).
        min_sparsity: with ``"csr"``, layers pruned less than this stay dense (their pruned
            weights zeroed); default :data:`CSR_MIN_SPARSITY`, the measured CPU crossover.
        adapter: match the mask's canonical names through this adapter; by default the one
            the mask recorded (``None``: parameter names).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> mask = vlticket.prune_magnitude(model, sparsity=0.96)
        >>> vlticket.export(model, mask, to="csr")[0]
        SparseLinear(in_features=64, out_features=64, density=0.0400)
    """
    if to not in FORMATS:
        raise ArgumentError(f"`to`: expected one of {FORMATS}, found {to!r}")
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    if min_sparsity is not None and to == "2:4":  # every 2:4 layer is swapped: say so
        raise ArgumentError(
            f"`min_sparsity`: applies to `to='csr'` only (2:4 layers are all 50% sparse), "
            f"found {min_sparsity!r} with to='2:4'"
        )
    if min_sparsity is None:
        min_sparsity = CSR_MIN_SPARSITY if to == "csr" else 0.0
    if (
        isinstance(min_sparsity, bool)  # True would mean "1.0", not "yes"
        or not isinstance(min_sparsity, (int, float))
        or not 0.0 <= min_sparsity <= 1.0
    ):
        raise ArgumentError(f"`min_sparsity`: expected a number in [0, 1], found {min_sparsity!r}")
    try:
        found = named_tensors(model, adapter=mask.naming(model, adapter), param="model")
        check_layout(mask.shapes(), found, what="the mask", where="`model`", exact=False)
    except NameMismatchError as e:
        if not any(isinstance(m, _InferenceOnly) for m in model.modules()):
            raise
        raise NameMismatchError(
            f"{e}; `model` was already exported (its sparse layers have no dense weight): "
            "export the dense model once"
        ) from None
    owners = _linear_owners(model)
    layers = {}
    for name in mask:
        if found[name].device.type == "meta":
            raise ArgumentError(f"tensor {name!r} is on the meta device, with no values to export")
        if id(found[name]) not in owners:
            hint = (
                "; it is parametrized: `torch.nn.utils.parametrize.remove_parametrizations("
                "module, 'weight')` first"
                if ".parametrizations." in f".{name}"
                else ""
            )
            raise ArgumentError(
                f"tensor {name!r} is not the weight of an nn.Linear: export swaps Linear layers "
                f"only; leave other tensors out of the mask (they stay dense){hint}"
            )
        layers[name] = owners[id(found[name])]
    sparsity = mask.tensor_sparsity()

    def swapped(name: str) -> bool:
        # Only a plain nn.Linear that its parent calls: a subclass may compute otherwise, and
        # torch's attention and transformer layers read their Linears' weights themselves in
        # their fused paths. Such layers stay dense and masked.
        plain = all(
            type(_at(model, parent, attr)) is nn.Linear
            and not isinstance(parent, _READS_CHILD_WEIGHTS)
            for parent, attr in layers[name]
        )
        return plain and (to == "2:4" or sparsity[name] >= min_sparsity)

    if to == "2:4":
        _check_semi_structured(mask, found)
    else:
        _check_csr_dtypes({n: found[n] for n in mask if swapped(n)})
    # Every sparse module is built before the first one is swapped in: a conversion that fails
    # (a shape torch's 2:4 kernels do not take, memory) leaves the model as it was.
    sparse_class = SemiStructuredLinear if to == "2:4" else SparseLinear
    built: dict[int, nn.Module] = {}  # id(Linear) -> its sparse module, one wherever it is used
    for name, places in layers.items():
        keep = mask[name]
        for parent, attr in places:
            linear = _at(model, parent, attr)
            if id(linear) in built or not swapped(name):
                continue
            try:
                built[id(linear)] = sparse_class(linear, keep)
            except (RuntimeError, MemoryError) as e:
                raise ArgumentError(
                    f"tensor {name!r} (shape {list(linear.weight.shape)}, "
                    f"{linear.weight.dtype}) cannot become {sparse_class.__name__}: {e}"
                ) from e
    result = built.get(id(model), model)  # a bare Linear cannot change class in place
    for places in layers.values():
        for parent, attr in places:
            if parent is not None:
                linear = getattr(parent, attr)
                setattr(parent, attr, built.get(id(linear), linear))
    # Every masked weight is zeroed in place too: a layer left dense, and any other module
    # tied to the weight (an embedding), then computes with the masked values.
    with torch.no_grad():
        for name in layers:
            found[name].masked_fill_(~mask[name].to(found[name].device), 0)
    return result


def _at(model: nn.Module, parent: nn.Module | None, attr: str) -> nn.Module:
    return model if parent is None else getattr(parent, attr)


def _linear_owners(model: nn.Module) -> dict[int, list[tuple[nn.Module | None, str]]]:
    """id(weight) -> every (parent module, attribute) holding an nn.Linear with that weight;
    ``(None, "")`` for ``model`` itself."""
    out: dict[int, list[tuple[nn.Module | None, str]]] = {}
    if isinstance(model, nn.Linear):
        out[id(model.weight)] = [(None, "")]
    for parent in model.modules():
        for attr, child in parent._modules.items():  # named_children skips a repeated module
            if isinstance(child, nn.Linear):
                out.setdefault(id(child.weight), []).append((parent, attr))
    return out


def _check_csr_dtypes(swapped: dict[str, torch.Tensor]) -> None:
    for name, weight in swapped.items():
        if weight.device.type == "cpu" and weight.dtype not in _CPU_CSR_DTYPES:
            raise ArgumentError(
                f"tensor {name!r} is {weight.dtype} on the CPU, where torch's CSR kernels take "
                "float32 or float64 only: export a float32 copy (`model.float()`), or keep "
                "such layers dense with a higher `min_sparsity`"
            )


def _check_semi_structured(mask: Mask, found: dict[str, torch.Tensor]) -> None:
    if not torch.cuda.is_available() or any(found[n].device.type != "cuda" for n in mask):
        raise ArgumentError(
            "`to='2:4'` needs the model on a CUDA device (torch.sparse.to_sparse_semi_structured "
            "runs on NVIDIA sparse tensor cores); use `to='csr'` on CPU"
        )
    if not mask.satisfies("2:4"):
        raise ArgumentError(
            "`to='2:4'`: the mask keeps more than 2 of some 4 consecutive weights; make it with "
            "`vlticket.prune_magnitude(model, pattern='2:4')`"
        )


__all__ = ["CSR_MIN_SPARSITY", "SemiStructuredLinear", "SparseLinear", "export"]
