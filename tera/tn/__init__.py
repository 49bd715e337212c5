"""``tera.tn``: tensor-network algebra in the TeRA paper's conventions, for numpy and torch.

Matricization follows the paper's Eq. (1) (row-major ``[N;k]`` unfolding), the mode-n
product its Eq. (3) (the matrix is ``I_n x J_n``; TensorLy's ``mode_dot`` takes its
transpose) and Tucker factors are ``R_i x I_i`` (Eq. 4). Every function accepts numpy
arrays or torch tensors, returns the same kind and keeps torch autograd intact.

Examples
--------
>>> import numpy as np
>>> import tera.tn as tn
>>> rng = np.random.default_rng(0)
>>> G = rng.standard_normal((4, 2, 2))
>>> A = [rng.standard_normal((4, 4)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))]
>>> dW = tn.tucker_to_matrix(G, A, k=1)   # a 4 x 4 update from an order-3 Tucker network
>>> dW.shape, bool(np.allclose(dW, tn.unfold(tn.tucker_to_tensor(G, A), 1)))
((4, 4), True)
"""

from tera.tn.contract import ContractionPlan, clear_plan_cache, contract, plan, plan_cache_info
from tera.tn.decompositions import hooi, hosvd
from tera.tn.folding import (
    fold,
    mode_fold,
    mode_unfold,
    split_dim,
    suggest_modes,
    unfold,
    valid_mode_sizes,
)
from tera.tn.products import khatri_rao, kron, kron_apply, mode_product, multi_mode_product
from tera.tn.rank1 import Rank1Approximation, rank1_approx, spectral_norm
from tera.tn.tucker import Tucker, tucker_to_matrix, tucker_to_tensor

__all__ = [
    "ContractionPlan",
    "Rank1Approximation",
    "Tucker",
    "clear_plan_cache",
    "contract",
    "fold",
    "hooi",
    "hosvd",
    "khatri_rao",
    "kron",
    "kron_apply",
    "mode_fold",
    "mode_product",
    "mode_unfold",
    "multi_mode_product",
    "plan",
    "plan_cache_info",
    "rank1_approx",
    "spectral_norm",
    "split_dim",
    "suggest_modes",
    "tucker_to_matrix",
    "tucker_to_tensor",
    "unfold",
    "valid_mode_sizes",
]
