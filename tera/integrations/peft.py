"""TeRA as a Hugging Face PEFT method: ``get_peft_model(model, TeraConfig(...))``.

Importing this module registers TeRA with PEFT (``PeftType.TERA``, prefix ``"tera_"``), after
which PEFT's own entry points work with it: ``get_peft_model``, ``print_trainable_parameters``,
``save_pretrained`` / ``PeftModel.from_pretrained`` / ``load_adapter`` (PEFT's folder layout),
``merge_and_unload``, ``set_adapter``, ``disable_adapter`` and mixed batches
(``model(..., adapter_names=[...])``), and so do the tools built on PEFT (TRL's
``SFTTrainer(peft_config=...)``, ``transformers.Trainer``, accelerate). Import it before
``PeftModel.from_pretrained`` reads a TeRA folder: PEFT has no plugin discovery.

Nothing of TeRA is implemented twice: each adapted layer is a :class:`TeraLayer`, PEFT's face
of tera's own :class:`~tera.adapters.AdapterLinear` (the same ``TeRA`` adapter modules, shared
frozen factors, engine and Tucker kernel as :func:`tera.adapters.adapt`), so a PEFT model and an
``adapt``-ed model with the same d's compute the same outputs bit for bit.

What this module relies on in PEFT (checked against the installed version at import, see
:data:`TESTED_PEFT_VERSIONS`):

* the ``PeftType`` enum, which has no public way to be extended: ``_add_peft_type`` adds the
  ``TERA`` member (the one place that touches PEFT's internals directly);
* ``register_peft_method``, ``BaseTuner`` and ``BaseTunerLayer`` (the tuner interface every
  PEFT method implements), and three of ``BaseTuner``'s documented per-method state-dict hooks:
  ``_remove_adapter_name_from_key`` (our keys are ``<layer>.tera_adapters.<name>.d.<i>``),
  ``_get_adapter_state_dict`` (selects the d's and adds the frozen factors' fingerprint,
  :data:`FINGERPRINT`) and ``_remap_adapter_state_dict_for_load`` (refuses a checkpoint with
  missing, mis-shaped or non-finite d's, or other frozen factors, where PEFT would only warn);
* ``_enable_peft_forward_hooks``, the context ``PeftModel.forward`` / ``generate`` open around a
  call with ``adapter_names=``; and ``AuxiliaryTrainingWrapper`` (``modules_to_save``), whose
  forward takes ``adapter_names`` as a keyword, delivered by a forward pre-hook as PEFT does.

Examples
--------
>>> import torch
>>> from peft import get_peft_model
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from tera.integrations.peft import TeraConfig
>>> base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
...                                     num_hidden_layers=1, num_attention_heads=2))
>>> model = get_peft_model(base, TeraConfig(in_mode=16, out_mode=4, task_type="CAUSAL_LM"))
>>> model.print_trainable_parameters()  # the d's of q_proj and v_proj: (16 | 4, 4) twice
trainable params: 48 || all params: 3,680 || trainable%: 1.3043
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from tera.errors import DependencyError

try:
    import peft
except ImportError:
    raise DependencyError(
        "tera.integrations.peft needs Hugging Face PEFT: pip install 'tera[peft]'"
    ) from None
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType, register_peft_method
from peft.utils.other import AuxiliaryTrainingWrapper

from tera.adapters import BASE_ADAPTER, AdapterLinear, RowAdapters, TeRAConfig
from tera.adapters.base import Adapter
from tera.adapters.batch import RowRouter, route
from tera.adapters.config import DEFAULT_TARGET_MODULES
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import linear_shape, module_weight
from tera.adapters.registry import adapter_class
from tera.errors import AdapterStateError, BackendError, FingerprintError, LoadError

__all__ = ["FINGERPRINT", "TESTED_PEFT_VERSIONS", "TeraConfig", "TeraLayer", "TeraModel"]

TESTED_PEFT_VERSIONS: tuple[str, ...] = ("0.21.2",)
"""PEFT releases this integration was tested with; any other is refused at import.

It adds a member to PEFT's ``PeftType`` enum and implements PEFT's tuner interface, whose
internals change between releases: an untested PEFT raises
:class:`~tera.errors.DependencyError` rather than risk silently wrong saving or loading.
"""

ADAPTERS = "tera_adapters"
"""The attribute of a :class:`TeraLayer` holding its TeRA adapters (a ``ModuleDict`` by name)."""

FINGERPRINT = "tera_factor_fingerprint"
"""The key of the frozen factors' SHA-256 (32 ``uint8``) in a saved adapter's weights.

It travels with the d's it belongs to, so every way PEFT loads them (``from_pretrained``,
``load_adapter``, a ``Trainer`` resuming from a checkpoint into a fresh process) checks it.
"""


def _check_peft_version(version: str) -> None:
    """Raise :class:`~tera.errors.DependencyError` unless ``version`` was tested."""
    if version not in TESTED_PEFT_VERSIONS:
        tested = ", ".join(TESTED_PEFT_VERSIONS)
        raise DependencyError(
            f"tera.integrations.peft was tested with PEFT {tested} but PEFT {version} is "
            f"installed; it extends PEFT's internals (the PeftType enum, the tuner interface), "
            f"so it refuses to run on another release: "
            f"pip install 'peft=={TESTED_PEFT_VERSIONS[-1]}'"
        )


def _add_peft_type(name: str) -> PeftType:
    """``PeftType.<name>``, added to PEFT's enum if missing: the one touch of PEFT's internals.

    ``register_peft_method`` requires ``name`` to be a member of ``PeftType`` already, and the
    enum has no public way to be extended; a member is built as ``enum`` builds one (a ``str``
    subclass instance with ``_name_``/``_value_``) and entered in the enum's maps.
    """
    found: PeftType | None = PeftType.__members__.get(name)
    if found is not None:
        return found
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType  # type: ignore[attr-defined]
    member._sort_order_ = len(PeftType._member_names_)  # type: ignore[attr-defined]
    add = getattr(PeftType, "_add_member_", None)  # Python >= 3.12
    if add is not None:  # pragma: no cover - Python >= 3.12 (this project's CI runs 3.11)
        add(name, member)
    else:
        type.__setattr__(PeftType, name, member)
        PeftType._member_map_[name] = member
    PeftType._member_names_.append(name)
    PeftType._value2member_map_[name] = member
    return member


_check_peft_version(peft.__version__)
TERA = _add_peft_type("TERA")


@dataclass
class TeraConfig(PeftConfig):
    """PEFT configuration of a TeRA adapter (paper Eq. 5), with tera's ``TeRAConfig`` fields.

    The TeRA fields (``in_mode``, ``out_mode``, ``in_modes``, ``out_modes``, ``ranks``,
    ``zero_init``, ``scale``, ``factors``, ``init``, ``seed``) mean exactly what they mean in
    :class:`tera.adapters.TeRAConfig`, which validates them (:meth:`to_tera`): a bad value raises
    tera's :class:`~tera.errors.ConfigError` when the config is built.

    Parameters
    ----------
    target_modules : list of str or str
        Layers to adapt, matched as PEFT (and tera) match them: exact names or dotted suffixes,
        or one regular expression; ``"all-linear"`` is PEFT's shorthand. Default: the query and
        value projections (:data:`~tera.adapters.DEFAULT_TARGET_MODULES`), as the paper.
    modules_to_save : list of str, optional
        Modules (e.g. a new head) trained and saved with the adapter (PEFT's wrappers).
    tera_dropout : float
        Dropout on the adapter's input (tera's ``dropout``).

    Examples
    --------
    >>> from tera.integrations.peft import TeraConfig
    >>> TeraConfig(in_mode=4096, out_mode=8).to_tera().scheme(4096, 4096)
    ((4096, 8, 8, 8, 8), 1, (4096, 8, 8, 8, 8), 4)
    """

    target_modules: list[str] | str | None = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Module names (exact or dotted suffix) or one regex to adapt."},
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained fully and saved with the adapter."}
    )
    in_mode: int = field(default=4096, metadata={"help": "Equal input mode size."})
    out_mode: int = field(default=8, metadata={"help": "Equal output mode size."})
    in_modes: Any = field(default=None, metadata={"help": "Explicit input modes (or per size)."})
    out_modes: Any = field(default=None, metadata={"help": "Explicit output modes (or per size)."})
    ranks: list[int] | None = field(default=None, metadata={"help": "Tucker ranks R_i."})
    zero_init: int = field(default=-1, metadata={"help": "Index of the d that starts at zero."})
    scale: float | None = field(default=None, metadata={"help": "RMS of dW at d = 1."})
    factors: str = field(default="shared", metadata={"help": "shared | unique | identity"})
    init: str = field(default="normalized", metadata={"help": "normalized | paper"})
    seed: int = field(default=0, metadata={"help": "Seed of the frozen factors."})
    tera_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[no-untyped-call]
        self.peft_type = TERA
        given: Any = self.target_modules
        if isinstance(given, set | tuple):
            self.target_modules = sorted(given)
        self.to_tera()  # validates every TeRA field now, with tera's errors

    def to_tera(self) -> TeRAConfig:
        """The same adapter as a :class:`tera.adapters.TeRAConfig` (for ``tera.adapters.adapt``).

        ``modules_to_save`` is left out: PEFT wraps those modules itself.

        Examples
        --------
        >>> from tera.integrations.peft import TeraConfig
        >>> TeraConfig(in_mode=64, out_mode=4, target_modules=["q_proj"]).to_tera().target_modules
        ('q_proj',)
        """
        given: Any = self.target_modules  # PEFT may have made it a set since
        targets: str | tuple[str, ...]
        if given is None:
            targets = DEFAULT_TARGET_MODULES
        elif isinstance(given, str):
            targets = given
        else:
            targets = tuple(sorted(given)) if isinstance(given, set) else tuple(given)
        return TeRAConfig(
            target_modules=targets,
            seed=self.seed,
            dropout=self.tera_dropout,
            in_mode=self.in_mode,
            out_mode=self.out_mode,
            in_modes=self.in_modes,
            out_modes=self.out_modes,
            ranks=None if self.ranks is None else tuple(self.ranks),
            zero_init=self.zero_init,
            scale=self.scale,
            factors=self.factors,
            init=self.init,
        )


def _check_adapter_name(name: object) -> None:
    """Refuse adapter names a TeRA layer cannot hold or a mixed batch could not tell apart."""
    if not isinstance(name, str) or not name or "." in name or name == BASE_ADAPTER:
        raise AdapterStateError(
            f"adapter_name must be a non-empty string without dots, other than "
            f"{BASE_ADAPTER!r} (which names the base model in mixed batches); got {name!r}"
        )


def _check_not_empty(adapter: Adapter, base_layer: nn.Module) -> None:
    """Refuse d's created without memory (PEFT's ``low_cpu_mem_usage=True``) on a real layer."""
    if module_weight(base_layer).is_meta:
        return  # a model built on the meta device: tera's to_empty / reset path
    if any(p.is_meta for p in adapter.parameters()):
        raise BackendError(
            "low_cpu_mem_usage=True creates the adapter without memory, but TeRA builds its "
            "network against the frozen factors at once; its d's are a few kilobytes: load "
            "without low_cpu_mem_usage"
        )


class TeraLayer(nn.Module, BaseTunerLayer):
    """PEFT's tuner layer for TeRA: tera's :class:`~tera.adapters.AdapterLinear` in PEFT's layout.

    The ``AdapterLinear`` does the work (forward on the cheaper engine path, mixed batches,
    merging); its modules are registered here under PEFT's names: ``base_layer`` (the wrapped
    layer, frozen, never saved), ``tera_adapters`` (the TeRA adapter modules by adapter name:
    the trainable d's), ``tera_dropout`` and ``tera_factors`` (the model's one
    :class:`~tera.adapters.factors.SharedFactors`, non-persistent buffers).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.integrations.peft import TeraConfig, TeraLayer
    >>> layer = TeraLayer(nn.Linear(16, 8), "default", TeraConfig(in_mode=4, out_mode=2), "fc")
    >>> [name for name, _ in layer.named_parameters()]  # doctest: +NORMALIZE_WHITESPACE
    ['base_layer.weight', 'base_layer.bias', 'tera_adapters.default.d.0',
     'tera_adapters.default.d.1', 'tera_adapters.default.d.2', 'tera_adapters.default.d.3',
     'tera_adapters.default.d.4']
    """

    adapter_layer_names = (ADAPTERS,)
    other_param_names = ("tera_dropout",)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: TeraConfig,
        layer_name: str,
        shared: SharedFactors | None = None,
    ) -> None:
        super().__init__()
        _check_adapter_name(adapter_name)
        shared = SharedFactors() if shared is None else shared
        tera_config = config.to_tera()
        adapter = self._build(tera_config, base_layer, layer_name, shared)
        _check_not_empty(adapter, base_layer)
        engine = AdapterLinear(
            base_layer,
            adapter,
            dropout=tera_config.dropout,
            shared=shared,
            adapter_name=adapter_name,
        )
        # the AdapterLinear is not a child: its modules are, under PEFT's names
        object.__setattr__(self, "_tera", engine)
        self.base_layer = engine.base_layer
        self.tera_adapters = engine.adapters
        self.tera_dropout = engine.dropouts
        self.tera_factors = engine.tera_factors
        self.in_features, self.out_features = engine.in_features, engine.out_features
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = [adapter_name]

    @staticmethod
    def _build(
        config: TeRAConfig, base_layer: nn.Module, layer_name: str, shared: SharedFactors
    ) -> Adapter:
        in_f, out_f = linear_shape(base_layer, layer_name)
        cls = adapter_class(config)
        device = module_weight(base_layer).device
        return cls(config, in_f, out_f, shared, layer_name, device=device)

    @property
    def engine(self) -> AdapterLinear:
        """The tera layer doing the work (it shares every module with this one)."""
        engine: AdapterLinear = self.__dict__["_tera"]
        return engine

    def update_layer(self, adapter_name: str, config: TeraConfig, layer_name: str) -> None:
        """Add the adapter ``adapter_name`` (PEFT's name); it shares the layer's frozen factors."""
        _check_adapter_name(adapter_name)
        tera_config = config.to_tera()
        adapter = self._build(tera_config, self.base_layer, layer_name, self.tera_factors)
        _check_not_empty(adapter, self.base_layer)
        self.engine.add_adapter(adapter_name, adapter, tera_config.dropout)

    # -- PEFT's layer interface ---------------------------------------------------------------
    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        """Make one adapter active (PEFT's name); TeRA layers run one at a time.

        Raises
        ------
        AdapterStateError
            For more than one name: combine adapters per row with ``adapter_names=`` instead.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise AdapterStateError(
                f"a TeRA layer runs one active adapter, got {names}; run several in one batch "
                "with model(..., adapter_names=[one name per row]) instead"
            )
        super().set_adapter(names, inference_mode=inference_mode)
        self.engine.active_adapter = names[0] if names else BASE_ADAPTER

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name`` from this layer (PEFT's name)."""
        if adapter_name in self.tera_adapters:
            self.engine.delete_adapter(adapter_name)
        super().delete_adapter(adapter_name)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``dW`` of ``adapter`` as ``out x in`` (PEFT's name), in float32 or wider.

        Examples
        --------
        >>> from torch import nn
        >>> from tera.integrations.peft import TeraConfig, TeraLayer
        >>> layer = TeraLayer(nn.Linear(16, 8), "default", TeraConfig(in_mode=4, out_mode=2), "x")
        >>> float(layer.get_delta_weight("default").detach().abs().max())  # d_N starts at zero
        0.0
        """
        return self.engine.delta_weight(adapter_name=adapter)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ``dW`` of the active adapter (or of the one in ``adapter_names``) to the base weight.

        tera always checks before writing (PEFT's ``safe_merge``): a non-finite result raises
        :class:`~tera.errors.MergeError` and leaves the weight unchanged.
        """
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        names = [n for n in names if n in self.tera_adapters and n not in self.merged_adapters]
        if not names:
            return
        if len(names) > 1 or self.merged:
            raise AdapterStateError(
                f"a TeRA layer merges one adapter; asked to merge {names} with "
                f"{self.merged_adapters} merged already: unmerge() first"
            )
        engine, previous = self.engine, self.engine.active_adapter
        engine.active_adapter = names[0]
        try:
            engine.merge()
        finally:
            engine.active_adapter = previous
        self.merged_adapters.append(names[0])

    def unmerge(self) -> None:
        """Subtract the merged ``dW`` again (PEFT's name)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        self.engine.unmerge()
        self.merged_adapters.clear()

    def train(self, mode: bool = True) -> TeraLayer:
        """As ``nn.Module.train``; the engine follows (its fusing and dropout depend on it)."""
        super().train(mode)
        self.engine.train(mode)
        return self

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus the active adapter's; with ``adapter_names=``, one adapter per row.

        ``adapter_names`` is a list with one name per row (``"__base__"`` for none) or a
        :class:`~tera.adapters.RowAdapters`; inside ``PeftModel.forward(..., adapter_names=...)``
        it comes from the call's context (:func:`tera.adapters.batch.route`).
        """
        names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            out: torch.Tensor = self.base_layer(x, *args, **kwargs)
            return out
        if names is not None:
            rows = names if isinstance(names, RowAdapters) else RowAdapters.from_names(list(names))
            return RowRouter(rows).forward(self.engine, x, *args, **kwargs)
        # the engine follows the routing of the call in progress (tera.adapters.batch.route)
        result: torch.Tensor = self.engine(x, *args, **kwargs)
        return result

    def _apply(self, fn: Any, recurse: bool = True) -> TeraLayer:
        # the engine is not a child: what it derived from the adapters goes stale with them
        self.engine.bank_cache.clear()
        return super()._apply(fn, recurse)  # type: ignore[no-any-return, no-untyped-call]

    def __repr__(self) -> str:
        return "tera." + super().__repr__()


def _tera_layers(model: nn.Module) -> Iterator[tuple[str, TeraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, TeraLayer):
            yield name, module


def _factor_fingerprint(model: nn.Module, adapter_name: str) -> str | None:
    """SHA-256 of the frozen factors ``adapter_name`` uses (None if no layer holds it)."""
    keys: set[str] = set()
    shared: SharedFactors | None = None
    for _, layer in _tera_layers(model):
        if adapter_name in layer.tera_adapters:
            shared = layer.tera_factors
            adapter: Adapter = layer.tera_adapters[adapter_name]  # type: ignore[assignment]
            keys.update(adapter.factor_keys)
    return None if shared is None else shared.fingerprint(keys)


def _saved_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """The factors' fingerprint a checkpoint carries (:data:`FINGERPRINT`), as hex."""
    found = [v for k, v in state_dict.items() if k.endswith(FINGERPRINT)]
    if len(found) != 1 or found[0].dtype != torch.uint8 or tuple(found[0].shape) != (32,):
        raise FingerprintError(
            f"the TeRA checkpoint carries no readable '{FINGERPRINT}' (32 uint8), so its frozen "
            "factors cannot be checked against those the d's were trained with; save the "
            "adapter with PeftModel.save_pretrained, which writes it"
        )
    return bytes(found[0].tolist()).hex()


def _adapter_names_pre_forward_hook(
    module: nn.Module, args: Any, kwargs: dict[str, Any], adapter_names: list[str]
) -> tuple[Any, dict[str, Any]]:
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


class TeraModel(BaseTuner):
    """PEFT's tuner for TeRA (made by ``get_peft_model`` for a :class:`TeraConfig`).

    The frozen factors are shared state, but they live on the layers (each
    :class:`TeraLayer` registers the model's one ``SharedFactors``), not on this tuner: so
    ``uses_shared_state`` stays ``False`` and ``peft.inject_adapter_in_model`` works too.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from peft import get_peft_model
    >>> from tera.integrations.peft import TeraConfig
    >>> mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> model = get_peft_model(mlp, TeraConfig(in_mode=4, out_mode=4, target_modules=["0"]))
    >>> type(model.base_model).__name__, type(model.base_model.model[0]).__name__
    ('TeraModel', 'TeraLayer')
    """

    prefix: str = "tera_"
    tuner_layer_cls = TeraLayer
    target_module_mapping: dict[str, list[str]] = {}  # noqa: RUF012 - PEFT's class attribute
    uses_shared_state: bool = False

    def _prepare_adapter_config(
        self, peft_config: PeftConfig, model_config: dict[str, Any]
    ) -> PeftConfig:
        if peft_config.target_modules is None:  # type: ignore[attr-defined]
            peft_config.target_modules = list(DEFAULT_TARGET_MODULES)  # type: ignore[attr-defined]
        return peft_config

    def _shared_factors(self) -> SharedFactors:
        """The model's frozen factors: those of its TeRA layers, or a new (empty) store."""
        for _, layer in _tera_layers(self.model):
            return layer.tera_factors
        return SharedFactors()

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if not isinstance(peft_config, TeraConfig):
            raise TypeError(f"TeraModel adapts with a TeraConfig, got {type(peft_config).__name__}")
        if isinstance(target, TeraLayer):
            target.update_layer(adapter_name, peft_config, current_key)
            return
        layer = TeraLayer(target, adapter_name, peft_config, current_key, self._shared_factors())
        if adapter_name not in self.active_adapters:
            layer.requires_grad_(False)  # an added adapter is not trainable until activated
        self._replace_module(parent, target_name, layer, target)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make one adapter active (PEFT's name); more than one raises ``AdapterStateError``."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) > 1:
            raise AdapterStateError(
                f"TeRA runs one active adapter, got {names}; run several in one batch with "
                "model(..., adapter_names=[one name per row]) instead"
            )
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    # -- mixed batches: adapter_names per call ------------------------------------------------
    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Route the call's rows to their adapters (PEFT's ``adapter_names=``), for this call only.

        tera's :func:`~tera.adapters.batch.route` carries the routing in a context variable
        (per thread and per asyncio task), never on the shared modules, so concurrent calls
        with different batches do not mix. PEFT's
        ``modules_to_save`` wrappers read ``adapter_names`` from their forward's keywords: they
        get it from a forward pre-hook, as PEFT gives it to them (a hook on the shared module
        for the duration of the call: with such wrappers, concurrent mixed batches are not
        safe, as in PEFT).
        """
        names = kwargs.pop("adapter_names", None)
        if names is None:
            yield
            return
        if self.training:
            raise AdapterStateError(
                "adapter_names= routes the rows of an inference batch; call model.eval() first "
                "(PEFT refuses it in training mode too)"
            )
        layers = [layer.engine for _, layer in _tera_layers(self.model)]
        known = sorted({n for layer in layers for n in layer.adapters})
        first = next(iter(args), kwargs.get("input_ids", kwargs.get("inputs_embeds")))
        with route(names, layers, known, first):  # checks the names, rows and merged state
            names = list(names)
            beams = kwargs.get("num_beams")
            aux = [n for n in names for _ in range(beams)] if isinstance(beams, int) else names
            handles = [
                module.register_forward_pre_hook(
                    partial(_adapter_names_pre_forward_hook, adapter_names=aux), with_kwargs=True
                )
                for module in self.model.modules()
                if isinstance(module, AuxiliaryTrainingWrapper)
            ]
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

    # -- saving and loading: PEFT's per-method state-dict hooks -------------------------------
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """``<layer>.tera_adapters.<name>.d.<i>`` -> ``<layer>.tera_adapters.d.<i>``."""
        head, sep, tail = ("." + key).rpartition(f".{ADAPTERS}.{adapter_name}.")
        if sep:
            return f"{head}.{ADAPTERS}.{tail}"[1:]
        out: str = super()._remove_adapter_name_from_key(key, adapter_name)
        return out

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: PeftConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """The adapter's d's in ``state_dict``, and the fingerprint of its frozen factors.

        Selected by their key (``.tera_adapters.<name>.``) rather than PEFT's walk over module
        names, which misses layers inside nested FSDP1 units (``_fsdp_wrapped_module`` in the
        middle of a name) and would write an empty adapter. Under FSDP a rank other than the
        main one may hold an empty gathered state dict (``full_state_dict`` on rank 0 only): it
        selects no d and writes nothing, and a folder written without the d's is refused when
        loaded. The fingerprint is :data:`FINGERPRINT` (with the adapter's name, which PEFT
        removes before writing).
        """
        marker = f".{ADAPTERS}.{adapter_name}."
        selected = {k: v for k, v in state_dict.items() if marker in "." + k}
        found = _factor_fingerprint(model, adapter_name)
        if found is not None:
            digest = torch.tensor(list(bytes.fromhex(found)), dtype=torch.uint8)
            selected[f"{FINGERPRINT}.{adapter_name}"] = digest
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls,
        model: nn.Module,
        config: PeftConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """PEFT's remapping, then the checks that make loading exact or an error.

        Raises
        ------
        LoadError
            A d of the adapter is missing, has another shape or holds NaN/inf, or the file has
            TeRA tensors this model has no place for (other layers, another scheme).
        FingerprintError
            The frozen factors regenerated here differ from those the adapter was saved with.
        """
        saved = _saved_fingerprint(state_dict)
        found = _factor_fingerprint(model, adapter_name)
        if found != saved:
            raise FingerprintError(
                f"the frozen factors regenerated from seed {getattr(config, 'seed', '?')} do not "
                f"match those the adapter was saved with ({str(found)[:12]}... vs "
                f"{saved[:12]}...): loading would give a different model"
            )
        rest = {k: v for k, v in state_dict.items() if not k.endswith(FINGERPRINT)}
        remapped: dict[str, torch.Tensor] = super()._remap_adapter_state_dict_for_load(
            model, config, adapter_name, rest
        )
        marker = f".{ADAPTERS}.{adapter_name}."
        here = {k: v for k, v in model.state_dict().items() if marker in "." + k}
        missing = sorted(set(here) - set(remapped))
        unexpected = sorted(k for k in remapped if f".{ADAPTERS}." in k and k not in here)
        if missing or unexpected:
            raise LoadError(
                f"the TeRA checkpoint does not fit adapter {adapter_name!r} of this model: "
                f"missing {missing[:4]}, unexpected {unexpected[:4]}; load it into the "
                "architecture and configuration it was trained with"
            )
        for key, current in here.items():
            value = remapped[key]
            if tuple(value.shape) != tuple(current.shape):
                raise LoadError(
                    f"tensor '{key}' has shape {tuple(value.shape)} in the checkpoint but "
                    f"{tuple(current.shape)} here"
                )
            if not torch.isfinite(value).all():
                raise LoadError(f"tensor '{key}' in the checkpoint holds NaN or inf values")
        return remapped


def _register() -> None:
    """Register TeRA with PEFT (once; importing this module does it)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    if PEFT_TYPE_TO_TUNER_MAPPING.get(TERA) is TeraModel:
        return
    register_peft_method(name="tera", config_cls=TeraConfig, model_cls=TeraModel, prefix="tera_")


_register()
