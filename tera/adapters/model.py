"""``adapt(model, config)`` and the ``AdaptedModel`` it returns: tera's PEFT-named face.

The jobs behind it have their own modules: targeting (``tera.adapters.targets``), the
layer (``tera.adapters.layer``), mixed batches (``tera.adapters.batch``), saving and
loading (``tera.adapters.saving``, over the byte format of ``tera.adapters.io``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path as FsPath
from typing import Any, overload

import torch
from torch import nn

import tera.adapters.hira
import tera.adapters.lora
import tera.adapters.tera
import tera.adapters.vera  # noqa: F401 - the four adapters register themselves on import
from tera.adapters import io, quantized, registry, saving
from tera.adapters.batch import route
from tera.adapters.config import AdapterConfig
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import AdapterLinear, EnginePath
from tera.adapters.many import AdapterRows, ManyAdapters
from tera.adapters.targets import (
    ParameterReport,
    attach,
    check_adapter_name,
    check_same_device,
    find_targets,
    modules_to_save,
    named_modules,
    parameter_report,
    set_submodule,
    targets_to_add,
)
from tera.errors import AdapterStateError, LoadError, ShapeError

__all__ = [
    "AdaptedModel",
    "ParameterReport",
    "adapt",
    "find_targets",
    "load_adapter",
    "load_adapter_weights",
    "parameter_report",
    "save_adapter",
]


def adapt(
    model: nn.Module,
    config: AdapterConfig,
    *,
    targets: Sequence[str] | None = None,
    adapter_name: str = "default",
) -> AdaptedModel:
    """Attach the adapter described by ``config`` to ``model``'s target layers.

    The base model's parameters are frozen (``requires_grad=False``), each target layer is
    replaced in place by an :class:`~tera.adapters.layer.AdapterLinear`, and the frozen
    shared factors are created once per key and registered on the model root.

    Parameters
    ----------
    model : nn.Module
        Any PyTorch model, e.g. a Hugging Face ``transformers`` model.
    config : AdapterConfig
        ``TeRAConfig``, ``VeRAConfig``, ``HiRAConfig`` or ``LoRAConfig``.
    targets : sequence of str, optional
        Exact layer names, overriding ``config.target_modules`` (used when loading).
    adapter_name : str
        The adapter's name (PEFT's ``"default"``); more adapters join it with
        :meth:`AdaptedModel.add_adapter` and :meth:`AdaptedModel.load_adapter`.

    Returns
    -------
    AdaptedModel

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt
    >>> mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> model = adapt(mlp, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
    >>> model.trainable_parameter_count()   # d vectors of modes (4, 4 | 4, 4)
    16
    """
    registry.adapter_class(config)  # refuses a config that is not an adapter's
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise AdapterStateError(
            "this model already carries an adapter; call unload() or merge_and_unload() on "
            "it before adapting it again"
        )
    if targets is None:
        found = find_targets(model, config.target_modules)
    else:
        found = named_modules(model, targets)
    saved = modules_to_save(model, config.modules_to_save)
    check_adapter_name(adapter_name)
    check_same_device(found)
    for p in model.parameters():
        p.requires_grad_(False)
    shared = SharedFactors()
    wrapped = attach(model, found, config, shared, adapter_name, adapter_name)
    for _, m in saved:
        for p in m.parameters():
            p.requires_grad_(True)
    return AdaptedModel(model, config, wrapped, [n for n, _ in saved], adapter_name)


class _Forward:
    """``AdaptedModel.forward``: calls the base model, shows the base ``forward``'s signature."""

    def __init__(self, model: AdaptedModel) -> None:
        self._model = model

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._model.base_model.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call_base(self._model, *args, **kwargs)


def _call_base(self: AdaptedModel, *args: Any, **kwargs: Any) -> Any:
    """Call the base model (its adapted layers run their adapters).

    ``adapter_names=[...]`` (one name per row, ``"__base__"`` for none) runs a mixed batch.
    """
    names = kwargs.pop("adapter_names", None)
    if names is None:
        return self.base_model(*args, **kwargs)
    with self._route(names, args, kwargs):
        return self.base_model(*args, **kwargs)


class _ForwardDescriptor:
    """``AdaptedModel.forward``: :class:`_Forward` on a model, a plain function on the class."""

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Callable[..., Any]: ...
    @overload
    def __get__(self, obj: AdaptedModel, owner: type | None = None) -> _Forward: ...
    def __get__(
        self, obj: AdaptedModel | None, owner: type | None = None
    ) -> _Forward | Callable[..., Any]:
        return _call_base if obj is None else _Forward(obj)


class AdaptedModel(ManyAdapters, nn.Module):
    """A model with adapters attached; forwards everything else to the base model.

    Attributes not defined here (``config``, ``get_input_embeddings``, ...) are looked up
    on the base model, so Hugging Face code sees the model it expects; the adapter's own
    configuration is ``adapter_config``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt
    >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
    >>> model.print_trainable_parameters()
    trainable params: 32 || all params: 104 || trainable%: 30.7692
    >>> base = model.merge_and_unload()
    >>> type(base[0]).__name__
    'Linear'
    """

    base_model: nn.Module

    def __init__(
        self,
        model: nn.Module,
        config: AdapterConfig,
        layers: Iterable[str],
        modules_to_save: list[str],
        adapter_name: str = "default",
    ) -> None:
        super().__init__()
        self.base_model = model
        self._configs: dict[str, AdapterConfig] = {adapter_name: config}
        self._active = adapter_name
        self._layer_names = list(layers)
        self.modules_to_save = modules_to_save
        self._rows = AdapterRows()  # adapters held as rows (tera.adapters.many)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    forward = _ForwardDescriptor()
    """Call the base model (its adapted layers run their adapters).

    On a model, a callable with the base model's ``forward`` signature, so code that
    inspects it (Hugging Face ``Trainer`` keeps only the dataset columns it names) sees
    ``input_ids``, ``labels``, ... rather than ``*args, **kwargs``.
    """

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Pass-through to the base model's ``generate`` (Hugging Face models).

        ``adapter_names=[...]`` (one name per prompt, ``"__base__"`` for none) generates a
        mixed batch: every step, prefill and the cached decoding steps alike, runs each row
        through its own adapter (beams and return sequences inherit their prompt's).
        """
        generate = getattr(self.base_model, "generate", None)
        if generate is None:
            raise AttributeError(f"{type(self.base_model).__name__} has no generate()")
        names = kwargs.pop("adapter_names", None)
        if names is None:
            return generate(*args, **kwargs)
        with self._route(names, args, kwargs):
            return generate(*args, **kwargs)

    def _route(
        self, names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> contextlib.AbstractContextManager[None]:
        """Every adapted layer runs row ``b`` through adapter ``names[b]`` (this call only)."""
        first = next(iter(args), kwargs.get("input_ids", kwargs.get("inputs_embeds")))
        return route(names, list(self.adapter_layers.values()), self._configs, first, self._rows)

    # -- many adapters (PEFT's names) ------------------------------------------------------
    @property
    def adapter_config(self) -> AdapterConfig:
        """The configuration of the active adapter."""
        return self._configs[self._active]

    @property
    def peft_config(self) -> dict[str, AdapterConfig]:
        """``name -> configuration`` of every adapter held (PEFT's name)."""
        return dict(self._configs)

    @property
    def adapter_names(self) -> list[str]:
        """The adapters held as modules, in the order added (``adapter_rows`` has the rows)."""
        return list(self._configs)

    @property
    def active_adapter(self) -> str:
        """The adapter a plain forward runs (set with :meth:`set_adapter`)."""
        return self._active

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the adapter a plain forward (and merge, save) uses.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import LoRAConfig, adapt
        >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
        >>> model.add_adapter("bob", LoRAConfig(r=4, target_modules=["0"]))
        >>> model.set_adapter("bob"); model.active_adapter
        'bob'
        """
        self._unpack_row(adapter_name)  # a row adapter becomes a module first
        self._require(adapter_name)
        if any(layer.merged for layer in self.adapter_layers.values()):
            raise AdapterStateError("the model is merged; unmerge() before switching adapters")
        self._active = adapter_name
        for layer in self.adapter_layers.values():
            layer.active_adapter = adapter_name

    def _require(self, adapter_name: str) -> None:
        if adapter_name not in self._configs:
            raise AdapterStateError(
                f"this model holds no adapter named {adapter_name!r}; it holds {self.adapter_names}"
            )

    def add_adapter(
        self,
        adapter_name: str,
        config: AdapterConfig,
        *,
        targets: Sequence[str] | None = None,
    ) -> None:
        """Add a new adapter (initialized as :func:`adapt` does); the active one stays.

        Adapters of one kind, scheme and seed share the frozen factors (one storage), so
        each extra adapter costs its trainable tensors only. It may target other layers
        than the adapters already held; on a layer it does not adapt it is the base.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> model.add_adapter("bob", config)
        >>> layer = model.adapter_layers["0"]
        >>> a, b = (layer.adapters[n].operands(layer.base_weight())[0] for n in ("default", "bob"))
        >>> a.data_ptr() == b.data_ptr()   # the frozen core G: one storage for both
        True
        """
        check_adapter_name(adapter_name)
        if adapter_name in self._configs or adapter_name in self._rows:
            raise AdapterStateError(
                f"this model already holds an adapter named {adapter_name!r}; "
                "delete_adapter() it first or choose another name"
            )
        registry.adapter_class(config)  # refuses a config that is not an adapter's
        found = targets_to_add(self.base_model, config, targets)
        self._configs[adapter_name] = config
        try:
            shared = self.shared_factors
            wrapped = attach(self.base_model, found, config, shared, adapter_name, self._active)
        except Exception:
            self.delete_adapter(adapter_name)
            raise
        self._layer_names.extend(wrapped)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter from every layer (PEFT's name).

        Layers left without any adapter are unwrapped (the plain base layer again). Deleting
        the active adapter makes the first remaining one active; the last one cannot be
        deleted (:meth:`unload` removes everything). A row adapter's row is dropped.
        """
        if self._drop_row(adapter_name):
            return
        self._require(adapter_name)
        remaining = [n for n in self._configs if n != adapter_name]
        if not remaining:
            raise AdapterStateError(
                f"{adapter_name!r} is the only adapter; unload() the model to remove it"
            )
        for name, layer in list(self.adapter_layers.items()):
            if adapter_name in layer.adapters:
                layer.delete_adapter(adapter_name)
            if not layer.adapters and not layer.row_slots:
                set_submodule(self.base_model, name, layer.base_layer)
                self._layer_names.remove(name)
        del self._configs[adapter_name]
        if self._active == adapter_name:
            self.set_adapter(remaining[0])

    def adapter_bytes(self, adapter_name: str | None = None) -> int:
        """Bytes of one adapter's own (trainable) tensors: what each extra adapter costs."""
        return self._own_bytes(adapter_name)  # a module's parameters, or a row

    @io.names_the_folder  # every error of a load names the folder
    def load_adapter(
        self, directory: str | FsPath, adapter_name: str, is_trainable: bool = False
    ) -> None:
        """Load a saved adapter as one more adapter named ``adapter_name`` (PEFT's name).

        The active adapter does not change (:meth:`set_adapter`, or ``adapter_names=`` per
        row). An adapter that does not fit the model (other layer names or shapes, another
        format, corrupted or non-finite tensors, frozen factors that differ from those the
        model's other adapters use under the same key) is refused with our error and
        leaves the model as it was: the other adapters stay usable.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     model.load_adapter(d, adapter_name="alice")
        >>> model.adapter_names
        ['default', 'alice']
        """

        def add(config: AdapterConfig, layers: list[str]) -> AdaptedModel:
            self.add_adapter(adapter_name, config, targets=layers)
            return self

        saving.attach_saved(
            self.base_model,
            directory,
            add,
            lambda model: model.delete_adapter(adapter_name),
            adapter_name,
            is_trainable,
        )

    # -- introspection ---------------------------------------------------------------------
    @property
    def adapter_layers(self) -> dict[str, AdapterLinear]:
        """``name -> AdapterLinear`` for every adapted layer."""
        return {n: self.base_model.get_submodule(n) for n in self._layer_names}  # type: ignore[misc]

    @property
    def shared_factors(self) -> SharedFactors:
        """The frozen shared factors (one storage per key)."""
        layers = list(self.adapter_layers.values())
        if not layers:
            raise AdapterStateError("the adapter was unloaded from this model")
        return layers[0].tera_factors

    def adapter_parameters(
        self, adapter_name: str | None = None
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of an adapter's (the active one's) tensors, named as saved.

        Saved names leave the adapter's name out (``<layer>.adapter.<parameter>``), as
        PEFT's files do, so one file loads under any name.
        """
        name = self._active if adapter_name is None else adapter_name
        self._require(name)
        for lname, layer in self.adapter_layers.items():
            if name in layer.adapters:
                for pname, p in layer.adapters[name].named_parameters():
                    yield f"{lname}.adapter.{pname}", p

    def trainable_parameter_count(self) -> int:
        """Parameters with ``requires_grad`` (adapter plus ``modules_to_save``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self) -> ParameterReport:
        """Counts as :func:`parameter_report`, on the adapted model."""
        active = self._active
        layers = {
            name: (
                lay.in_features,
                lay.out_features,
                sum(p.numel() for p in lay.adapters[active].parameters()),
            )
            for name, lay in self.adapter_layers.items()
            if active in lay.adapters
        }
        saved = [self.base_model.get_submodule(n) for n in self.modules_to_save]
        return ParameterReport.of(layers, saved, self.base_parameters())

    def base_parameters(self) -> Iterator[nn.Parameter]:
        """The base model's parameters (every adapter's own tensors left out)."""
        own = {id(p) for layer in self.adapter_layers.values() for p in layer.adapters.parameters()}
        return (p for p in self.parameters() if id(p) not in own)

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line: ``trainable params: N || all params: M || trainable%: P``."""
        trainable = self.trainable_parameter_count()
        total = sum(quantized.numel(p) for p in self.parameters())  # hook: 4-bit weights
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # -- engine ----------------------------------------------------------------------------
    def set_engine_path(self, path: EnginePath) -> None:
        """Force every layer to ``"materialize"`` or ``"push"``, or back to ``"auto"``."""
        if path not in ("auto", "materialize", "push"):
            raise ShapeError(f"path must be 'auto', 'materialize' or 'push', got {path!r}")
        for layer in self.adapter_layers.values():
            layer.path = path

    # -- merging and unloading -------------------------------------------------------------
    def merge(self) -> None:
        """Merge every adapter into its base weight (inference at base speed)."""
        with quantized.merge_report():  # quantized-base hook: one warning for all layers
            for layer in self.adapter_layers.values():
                if layer.active_adapter in layer.adapters:
                    layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        layers = list(self.adapter_layers.values())
        if layers and not any(layer.merged for layer in layers):
            raise AdapterStateError("this model is not merged; nothing to unmerge")
        for layer in layers:
            if layer.merged:
                layer.unmerge()

    def _replace_layers(self, merge: bool, dequantize: bool = False) -> nn.Module:
        with quantized.merge_report():  # one warning for all requantized layers
            for name, layer in self.adapter_layers.items():
                set_submodule(self.base_model, name, layer.unwrap(merge, dequantize))
        self._layer_names = []
        self._rows.clear()
        if dequantize:  # the rest of a quantized model in full precision too
            quantized.dequantize_model(self.base_model)
        return self.base_model

    def merge_and_unload(self, dequantize: bool = False) -> nn.Module:
        """Merge the adapters and return the base model with plain layers again.

        On a quantized base (see :mod:`tera.adapters.quantized`) each adapted layer is
        dequantized, ``dW`` added and the sum requantized, with a
        :class:`~tera.adapters.quantized.QuantizedMergeWarning` stating the error that
        introduced (max and rms over the weights); ``dequantize=True`` instead returns
        float32 ``nn.Linear`` layers holding ``W0 + dW`` for every quantized layer.
        """
        return self._replace_layers(merge=True, dequantize=dequantize)

    def unload(self) -> nn.Module:
        """Remove the adapters without merging and return the original base model."""
        return self._replace_layers(merge=False)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager in which the model computes as the base model."""
        layers = list(self.adapter_layers.values())
        merged = [layer for layer in layers if layer.merged]
        for layer in merged:
            layer.unmerge()
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False
            for layer in merged:
                layer.merge()

    # -- materializing a meta-device model ----------------------------------------------------
    def to_empty(
        self, *, device: str | torch.device | int | None, recurse: bool = True
    ) -> AdaptedModel:
        """Give a model adapted on the ``meta`` device memory, with the adapter initialized.

        As ``torch.nn.Module.to_empty`` (every tensor gets uninitialized storage on
        ``device``), then the adapter's tensors get their values: the frozen shared factors
        are regenerated from their seed (bit-exact, fingerprint-checked) and the trainable
        ones re-initialized as :func:`adapt` initializes them. The base weights stay
        uninitialized: load them next (:meth:`load_base_state_dict`), and a trained adapter
        after that (:meth:`load_adapter_weights`). The result equals the ordinary path,
        ``adapt()`` on a loaded model (tested).

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> torch.manual_seed(0); real = nn.Sequential(nn.Linear(16, 16))  # doctest: +ELLIPSIS
        <...>
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> with torch.device("meta"):
        ...     base = nn.Sequential(nn.Linear(16, 16))
        >>> model = adapt(base, config).to_empty(device="cpu")   # no memory until here
        >>> model.load_base_state_dict(real.state_dict())
        >>> x = torch.randn(2, 16)
        >>> torch.equal(model(x), adapt(real, config)(x))
        True
        """
        super().to_empty(device=device, recurse=recurse)
        self.reset_adapter()
        return self

    def reset_adapter(self) -> None:
        """Regenerate the frozen factors and re-initialize the trainable adapter tensors."""
        layers = list(self.adapter_layers.values())
        if not layers:
            raise AdapterStateError("the adapter was unloaded from this model")
        for shared in {id(layer.tera_factors): layer.tera_factors for layer in layers}.values():
            shared.reset_parameters()
        for layer in layers:
            for adapter in layer.adapters.values():
                adapter.reset_parameters()  # type: ignore[operator]

    def load_base_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True
    ) -> None:
        """Load the base model's weights, named as in the model before :func:`adapt`.

        ``'layers.0.q_proj.weight'`` goes to the adapted layer's
        ``'layers.0.q_proj.base_layer.weight'``; the adapter's own tensors are not touched.
        With ``strict``, every base tensor must be given and nothing else.

        Raises
        ------
        LoadError
            With ``strict``: missing or unexpected keys (named).
        """
        names = set(self._layer_names)
        mapped = {}
        for key, value in state_dict.items():
            owner, _, leaf = key.rpartition(".")
            mapped[f"{owner}.base_layer.{leaf}" if owner in names else key] = value
        result = self.base_model.load_state_dict(mapped, strict=False)
        adapter_keys = {
            k for k in self.base_model.state_dict() if ".adapters." in k or "tera_factors" in k
        }
        missing = sorted(set(result.missing_keys) - adapter_keys)
        if strict and (missing or result.unexpected_keys):
            raise LoadError(
                f"the state dict does not fit the base model: missing {missing[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]}"
            )

    # -- saving and loading -------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | FsPath,
        include_factors: bool = False,
        *,
        selected_adapters: Sequence[str] | None = None,
        format: str = "tera",
        is_main_process: bool = True,
        **hf_kwargs: Any,
    ) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` to ``directory``.

        With several adapters, as PEFT: ``selected_adapters`` (default: all) are written,
        ``"default"`` into ``directory`` itself and every other into ``directory/<name>``.

        The format is ``tera.adapters.io``'s. ``directory`` is created if missing and the
        two files inside are replaced atomically (leftovers of killed saves are swept).
        ``include_factors`` also stores the frozen shared factors (for portability to a
        future tera whose generator differs, or for auditing). Accepts the keyword arguments
        Hugging Face code passes to a ``save_pretrained`` (``is_main_process``: only the main
        process of a distributed run writes; ``state_dict``, ``safe_serialization``, ...:
        ignored, the adapter's own tensors are saved, always as safetensors).

        ``format="peft"`` writes the folder Hugging Face PEFT writes for the same LoRA,
        VeRA or HiRA (frozen factors included), which ``peft.PeftModel.from_pretrained``
        loads (see :mod:`tera.adapters.peft_format`; a TeRA adapter raises
        :class:`~tera.errors.FormatError`).

        Examples
        --------
        >>> import tempfile, os
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     sorted(os.listdir(d))
        ['adapter_config.json', 'adapter_model.safetensors']
        """
        if not is_main_process:
            return
        names = self.adapter_names if selected_adapters is None else list(selected_adapters)
        rows, names = self._row_folders(names, format)  # row adapters: from their bank
        for name in names:
            self._require(name)
        saving.save(self, directory, names, include_factors, format, rows)

    @classmethod
    @io.names_the_folder  # every error of a load names the folder
    def from_pretrained(
        cls,
        model: nn.Module,
        directory: str | FsPath,
        is_trainable: bool = False,
        adapter_name: str = "default",
    ) -> AdaptedModel:
        """Attach a saved adapter to ``model`` (the inverse of :meth:`save_pretrained`).

        Parameters
        ----------
        model : nn.Module
            A base model with the same layer names and shapes as the one the adapter was
            trained on.
        directory : str or Path
            Directory written by ``save_pretrained``, or by PEFT's ``save_pretrained`` for a
            LoRA, VeRA or HiRA (read by :func:`tera.adapters.peft_format.read_peft`).
        is_trainable : bool
            Keep the adapter's parameters trainable (to continue training); by default they
            are frozen and the model is put in ``eval()`` mode for inference, as in PEFT.
        adapter_name : str
            The name it gets (more join with :meth:`load_adapter`).

        Returns
        -------
        AdaptedModel

        Raises
        ------
        LoadError
            Missing or corrupted files (NaN/inf tensors included), a newer format, other
            layer names or shapes.
        FingerprintError
            The regenerated frozen factors differ from those the adapter was trained with.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import AdaptedModel, TeRAConfig, adapt
        >>> torch.manual_seed(0); base = nn.Sequential(nn.Linear(16, 16))  # doctest: +ELLIPSIS
        <...>
        >>> model = adapt(base, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
        >>> with torch.no_grad(): _ = model.base_model[0].adapter.d[-1].fill_(0.5)
        >>> x = torch.randn(2, 16); y = model(x)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     loaded = AdaptedModel.from_pretrained(model.unload(), d)
        >>> torch.equal(loaded(x), y)
        True
        """
        adapted = saving.attach_saved(
            model,
            directory,
            lambda config, layers: adapt(model, config, targets=layers, adapter_name=adapter_name),
            lambda adapted: adapted.unload(),
            adapter_name,
            is_trainable,
        )
        if not is_trainable:  # loaded for inference, as PEFT: dropout off
            adapted.eval()
        return adapted

    @io.names_the_folder  # every error of a load names the folder
    def load_adapter_weights(
        self, directory: str | FsPath, adapter_names: Sequence[str] | None = None
    ) -> None:
        """Load the tensors of the adapters saved from this same model (resume training).

        What ``Trainer``'s ``resume_from_checkpoint`` needs: every adapter (or those in
        ``adapter_names``) is read from where :meth:`save_pretrained` writes it, whichever
        is active, and overwritten in place (``requires_grad`` kept: an optimizer holding
        the parameters stays valid). All load, or none (a failure puts everything back).

        Raises
        ------
        LoadError
            A missing folder or file, corrupted files, another configuration or layers.
        FingerprintError
            The frozen factors differ from those the adapter was trained with.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
        ...                                                             target_modules=["0"]))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     with torch.no_grad(): _ = model.base_model[0].adapter.d[0].fill_(3.0)
        ...     model.load_adapter_weights(d)
        >>> model.base_model[0].adapter.d[0].tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        names = self.adapter_names if adapter_names is None else list(adapter_names)
        for name in names:
            self._require(name)
        saving.load_weights(self, directory, names)


def save_adapter(
    model: AdaptedModel, directory: str | FsPath, include_factors: bool = False
) -> None:
    """Save an adapted model's adapter: :meth:`AdaptedModel.save_pretrained`.

    Examples
    --------
    >>> import tempfile, os
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt, save_adapter
    >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_adapter(model, d); sorted(os.listdir(d))
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    model.save_pretrained(directory, include_factors=include_factors)


def load_adapter(
    model: nn.Module, directory: str | FsPath, is_trainable: bool = False
) -> AdaptedModel:
    """Attach a saved adapter to ``model``: :meth:`AdaptedModel.from_pretrained`.

    Exported as ``tera.adapters.from_pretrained``.

    Examples
    --------
    >>> import tempfile
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt, from_pretrained
    >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d); type(from_pretrained(model.unload(), d)).__name__
    'AdaptedModel'
    """
    return AdaptedModel.from_pretrained(model, directory, is_trainable)


def load_adapter_weights(
    model: AdaptedModel, directory: str | FsPath, adapter_names: Sequence[str] | None = None
) -> None:
    """Resume training: :meth:`AdaptedModel.load_adapter_weights`.

    Examples
    --------
    >>> import tempfile
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt, load_adapter_weights
    >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d); load_adapter_weights(model, d)
    """
    model.load_adapter_weights(directory, adapter_names)
