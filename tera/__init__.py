"""tera: TeRA adapters and the tensor-network algebra under them.

``tera.tn`` holds the generic algebra (folding, mode products, Tucker, Kronecker forms,
contraction planning); ``tera.theory`` states the paper's theorems as functions.

Examples
--------
>>> import tera
>>> tera.tn.split_dim(4096, 8)
(8, 8, 8, 8)
>>> tera.theory.rank_bound((4096, 8, 8, 8, 8), k=1)
4096
"""

from tera import errors, theory, tn

__version__ = "0.1.0"

__all__ = ["__version__", "errors", "theory", "tn"]
