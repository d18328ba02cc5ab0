"""Lazy plug-in registry over entry points, in the spirit of fsspec's ``registry``.

Built-ins register through the same entry-point groups as third-party plug-ins
(see ``pyproject.toml``). Nothing is imported until a name is asked for, so a broken or
half-installed plug-in only fails when it is used, and never stops the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from crowdloop.errors import RegistryError

# Optional extras that built-in plug-ins need, so a missing SDK names the right install.
BUILTIN_EXTRAS: dict[tuple[str, str], str] = {
    ("crowdloop.vendors", "mturk"): "mturk",
    ("crowdloop.vendors", "label_studio"): "labelstudio",
    ("crowdloop.vendors", "prolific"): "prolific",
    ("crowdloop.stores", "s3"): "s3",
}


def _source(ep: EntryPoint) -> str:
    """Where an entry point comes from: ``distribution version (module:attr)``."""
    dist = getattr(ep, "dist", None)
    owner = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
    return f"{owner} ({ep.value})"


@dataclass
class Registry:
    """Named plug-ins of one kind (``group`` is the entry-point group)."""

    group: str
    kind: str
    _overrides: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def _all_entry_points(self) -> dict[str, list[EntryPoint]]:
        # Metadata is read on every call (cheap) so a plug-in installed while the process runs
        # is found; a module is imported only by ``load``. importlib.metadata already keeps one
        # copy of each distribution, so two entries under one name are two distributions.
        found: dict[str, list[EntryPoint]] = {}
        for ep in entry_points(group=self.group):
            found.setdefault(ep.name, []).append(ep)
        return found

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {name: eps[0] for name, eps in self._all_entry_points().items()}

    def _refuse_duplicate(self, name: str) -> None:
        """Two distributions claiming one name: which one runs would depend on install order."""
        candidates = self._all_entry_points().get(name, [])
        if len(candidates) > 1:
            sources = " and by ".join(_source(ep) for ep in candidates)
            raise RegistryError(f"{self.kind} {name!r} is registered twice (entry-point group {self.group!r}), "
                                f"by {sources}; uninstall one of them")

    def names(self) -> list[str]:
        """All registered names, sorted; loading none of them."""
        return sorted(set(self._entry_points()) | set(self._overrides))

    def known(self) -> str:
        """The known names for an error message."""
        return ", ".join(self.names()) or "none (is crowdloop installed? run: pip install -e .)"

    def check_name(self, name: str) -> None:
        """Raise the one-line unknown-name error unless ``name`` is registered; imports nothing."""
        if name in self._overrides:
            return
        if name not in self._entry_points():
            raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind}s: {self.known()}")
        self._refuse_duplicate(name)

    def register(self, name: str, obj: Any, *, replace: bool = False) -> None:
        """Register an object in-process (tests, notebooks); entry points stay the normal way.

        A name that is already registered is refused (naming who holds it), unless
        ``replace=True``: silently shadowing a plug-in would run something the user did not pick.
        """
        if not replace:
            if name in self._overrides:
                raise RegistryError(f"{self.kind} {name!r} is already registered in this process "
                                    f"({_describe(self._overrides[name])}); pass replace=True to replace it")
            eps = self._all_entry_points().get(name)
            if eps:
                raise RegistryError(f"{self.kind} {name!r} is already registered by {_source(eps[0])}; "
                                    "pass replace=True to replace it")
        self._overrides[name] = obj
        self._cache.pop(name, None)

    def unregister(self, name: str) -> None:
        """Forget an in-process registration (entry points are untouched)."""
        self._overrides.pop(name, None)
        self._cache.pop(name, None)

    def load(self, name: str) -> Any:
        """Import and return the plug-in called ``name``, with a one-line error if impossible."""
        if name in self._overrides:
            return self._overrides[name]
        if name in self._cache:
            return self._cache[name]
        eps = self._entry_points()
        if name not in eps:
            raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind}s: {self.known()}")
        self._refuse_duplicate(name)
        ep = eps[name]
        try:
            obj = ep.load()
        except ModuleNotFoundError as exc:
            missing = exc.name or "?"
            extra = BUILTIN_EXTRAS.get((self.group, name))
            hint = f"pip install 'crowdloop[{extra}]'" if extra else f"install the package that provides {missing!r}"
            raise RegistryError(
                f"{self.kind} {name!r} needs the missing package {missing!r}: {hint}"
            ) from exc
        except Exception as exc:
            reason = " ".join(str(exc).split()) or exc.__class__.__name__
            raise RegistryError(
                f"{self.kind} {name!r} ({ep.value}) failed to load: {exc.__class__.__name__}: {reason}"
            ) from exc
        self._cache[name] = obj
        return obj


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


vendors = Registry("crowdloop.vendors", "vendor")
samplers = Registry("crowdloop.samplers", "sampler")
aggregators = Registry("crowdloop.aggregators", "aggregator")
pools = Registry("crowdloop.pools", "pool source")
stores = Registry("crowdloop.stores", "store scheme")
secrets = Registry("crowdloop.secrets", "secret source")


def import_object(path: str, *, what: str = "object") -> Any:
    """Import ``package.module.Name`` (or ``package.module:Name``) with a one-line error."""
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not attr:
        raise RegistryError(f"{what} {path!r}: expected an import path like 'sklearn.linear_model.LogisticRegression'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RegistryError(f"{what} {path!r}: module {exc.name!r} not found") from exc
    except ImportError as exc:
        raise RegistryError(f"{what} {path!r}: import failed: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}") from None
