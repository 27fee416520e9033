"""Which ops of a model's provenance run could bend a conjugate form, for ``AutoCAVI``.

``AutoCAVI`` solves each factor at probe points and checks it at fresh ones drawn the same
way (:mod:`pyro_vae.cavi.conjugate_forms`). A form that holds there can still fail where q
settles only if the log-density changes form between the two: a kink (``mu.clamp(max=3)``,
``torch.where(mu > 0, …)``, ``abs``, ``max``) or a branch in Python on a latent's value
(``if mu.item() > 0``). So after the sweeps the factors are checked again at points drawn
from q (:mod:`pyro_vae.cavi.verification`), one more model run: 27% of the benchmark
mixture's fit and 23% of the regression's (``benchmarks/autocavi.py``).

That check is needed only where such an op exists. The provenance run
(:func:`~pyro_vae.cavi.conjugate_forms.first_run`) sees every torch op applied to a tensor
computed from a latent (:mod:`pyro_vae.cavi.provenance`), and :func:`classify` sorts each:

- ``None``: analytic in its floating arguments on its domain, :data:`ANALYTIC` (arithmetic,
  ``exp``, ``log``, ``lgamma``, Cholesky factors and triangular solves, reshapes, indexing,
  sums, ``logsumexp``): a composition of them is real-analytic where it is defined, so a
  form that reproduces it at random check points to 1e-9 is not one that holds on part of
  the space only;
- ``"op"``: any other op with a floating result (``clamp``, ``abs``, ``maximum``,
  ``floor``, ``sort``, an op not listed): possibly piecewise;
- ``"discretize"``: an integer or boolean result (a comparison, ``.long()``, ``argmax``),
  whose use (a mask, an index) is piecewise in a continuous latent;
- ``"escape"``: a value read into Python (``item``, ``bool``, ``float``, ``tolist``, whose
  branches the one run follows only one way) or written into another tensor
  (``__setitem__``, in-place ops, after which its later ops are not seen).

:func:`non_analytic` then keeps the ops that matter: an op or a discretization that read a
continuous latent (one of a discrete latent, ``z == k``, ``means[z]``, is exact: the probes
take every value of z), an escape that read any latent. The fitted ``AutoCAVI`` reports
them (``nonanalytic_ops_``) and checks at q exactly when there is one. Ops that run while a
latent is drawn from its prior (Pyro's samplers, between a site's ``_pyro_sample`` and its
``_pyro_post_sample``) are not the log-density's and are not classified.

One exception, named: torch's ``clamp_probs`` (``probs.clamp(eps, 1 − eps)``, inside every
``Categorical``, ``Bernoulli`` and ``Binomial`` given ``probs``) counts as analytic. It
bends log p only for probabilities below float64's eps (2.2e-16), where the check at q never
draws (:data:`pyro_vae.cavi.verification._PROBABILITY_FLOOR` keeps its draws at 1e-12 and
above), so that check would not look there either.
"""

from __future__ import annotations

import torch

from pyro_vae.cavi.exponential_families import DISCRETE_FAMILIES
from pyro_vae.cavi.positivity import BRANCH

#: Ops (``func.__name__`` as ``__torch_function__`` receives it) analytic in their floating
#: arguments where they are defined.
ANALYTIC = frozenset(
    {
        # arithmetic, and functions analytic on the whole real line (or meromorphic)
        "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "rsub", "mul", "__mul__",
        "__rmul__", "div", "__div__", "__rdiv__", "__truediv__", "__rtruediv__",
        "true_divide", "neg", "__neg__", "negative", "square", "reciprocal", "exp", "expm1",
        "digamma", "polygamma", "sigmoid", "logsigmoid", "tanh", "sin", "cos", "softmax",
        "log_softmax", "_softmax", "_log_softmax", "logsumexp", "logaddexp",
        "binary_cross_entropy_with_logits",
        # linear algebra: products, solves and inverses (rational in the entries)
        "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "dot", "outer", "einsum",
        "tensordot", "cholesky_solve", "cholesky_inverse", "linalg_solve_triangular",
        "triangular_solve", "linalg_inv", "inverse", "linalg_solve", "det", "linalg_det",
        "diagonal", "diag_embed", "diag", "trace", "tril", "triu", "kron",
        # shapes, copies, selection by data or by a discrete latent
        "reshape", "view", "view_as", "expand", "expand_as", "broadcast_to",
        "broadcast_tensors", "unsqueeze", "squeeze", "flatten", "unflatten", "permute",
        "transpose", "t", "movedim", "moveaxis", "contiguous", "clone", "detach", "flip",
        "roll", "narrow", "select", "index_select", "gather", "take_along_dim", "__getitem__",
        "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind", "tile", "repeat",
        "repeat_interleave", "type_as", "to", "double", "float", "new_zeros", "new_ones",
        "new_empty", "new_full", "new_tensor", "zeros_like", "ones_like", "full_like",
        "empty_like", "sum", "mean", "prod", "cumsum", "cumprod", "where", "masked_fill",
        "__get__",
    }
)  # fmt: skip
#: Ops whose non-tensor result reads a tensor's layout, not its values.
SHAPE_READS = frozenset(
    {
        "__get__", "dim", "size", "numel", "nelement", "ndimension", "is_floating_point",
        "is_complex", "stride", "__len__", "element_size", "is_contiguous", "storage_offset",
        "result_type", "__hash__", "get_device",
    }
)  # fmt: skip


def classify(name: str, kwargs: dict | None, result, in_domain: bool = False) -> str | None:
    """The kind of an op that read a latent (see the module docstring): None (analytic or
    a read of shape), ``"op"``, ``"discretize"`` or ``"escape"``. ``name``: the op's
    ``__name__``; ``kwargs``: its keyword arguments; ``result``: what it returned;
    ``in_domain``: for a branch op (``sqrt``, ``log``, a Cholesky factor: see
    :data:`pyro_vae.cavi.positivity.BRANCH`), whether its argument is positive (or
    positive definite) over the latents' support
    (:func:`pyro_vae.cavi.positivity.in_domain`), where it is analytic."""
    analytic = name in ANALYTIC or (in_domain and name in BRANCH)
    if analytic and type(result) is torch.Tensor and result.is_floating_point():
        return None  # the common case first
    if name == "__setitem__" or (name.endswith("_") and not name.startswith("__")):
        return "escape"  # in place: a write the tensor written into may not carry
    if isinstance(result, torch.Tensor):
        if not (result.is_floating_point() or result.is_complex()):
            return "discretize"
        return None if analytic or _clamps_probs(name, kwargs, result) else "op"
    if isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
        return None if analytic else "op"
    return None if name in SHAPE_READS else "escape"


def _clamps_probs(name: str, kwargs: dict | None, result: torch.Tensor) -> bool:
    """Whether this is torch's ``clamp_probs``: ``clamp(min=eps, max=1 - eps)`` of the
    result's dtype."""
    if name != "clamp" or not kwargs:
        return False
    eps = torch.finfo(result.dtype).eps
    return kwargs.get("min") == eps and kwargs.get("max") == 1 - eps


def non_analytic(log: list, latents: dict) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The ops of ``log`` (``(kind, op name, provenance)``, as
    :class:`~pyro_vae.cavi.provenance.TrackFastProvenance` records them) that may bend a
    factor's form: an ``"op"`` or ``"discretize"`` that read a continuous latent, an
    ``"escape"`` that read any. ``latents``: {unit: :class:`Latent`}. Each op once, as
    (op name, the latent units it read, in ``latents``' order), in the order first seen."""
    discrete = {
        site
        for latent in latents.values()
        if latent.family.name in DISCRETE_FAMILIES
        for site in latent.sites
    }
    unit_of = {site: name for name, latent in latents.items() for site in latent.sites}
    found = {}
    for kind, name, provenance in log:
        read = {site for site in provenance if site in unit_of}
        if kind != "escape":
            read -= discrete
        if read:
            units = {unit_of[site] for site in read}
            key = (name, tuple(unit for unit in latents if unit in units))
            found.setdefault(key, None)
    return tuple(found)
