"""Load a user's application file and find the ``sl.Flow`` it defines.

An application is a plain Python file with a module-level ``sl.Flow``. It is
imported under its own module name (not ``__main__``, so an
``if __name__ == "__main__":`` block does not run), with its directory first
on ``sys.path`` so that it can import its neighbours, as ``python app.py`` would.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sluice.api.flow import Flow
from sluice.errors import SluiceError


class AppError(SluiceError):
    """The application file cannot be found, imported, or has no usable flow."""


@dataclass(frozen=True)
class App:
    """An imported application: its module and the flows defined at module level."""

    path: Path
    module: ModuleType
    flows: dict[str, Flow]

    def flow(self, choice: str | None = None) -> tuple[str, Flow]:
        """The flow to run: the only one, or the one ``choice`` names (by variable
        name or by ``Flow(name)``).

        >>> import sluice as sl
        >>> from types import ModuleType
        >>> app = App(Path("app.py"), ModuleType("app"), {"f": sl.Flow("clicks")})
        >>> app.flow("clicks")[0]
        'f'
        """
        if not self.flows:
            raise AppError(
                f"{self.path}: no sl.Flow found at module level; define one, e.g. "
                "`flow = sl.Flow('my-job')`, and give it a source and a sink"
            )
        if choice is None:
            if len(self.flows) == 1:
                return next(iter(self.flows.items()))
            raise AppError(
                f"{self.path} defines several flows: {self._listing()}; pick one with --flow NAME"
            )
        for var, f in self.flows.items():
            if var == choice:
                return var, f
        matches = [(var, f) for var, f in self.flows.items() if f.name == choice]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AppError(
                f"{self.path}: several flows are named {choice!r}; pick one by variable "
                f"name: {', '.join(v for v, _ in matches)}"
            )
        raise AppError(f"{self.path}: no flow {choice!r}; the file defines {self._listing()}")

    def _listing(self) -> str:
        return ", ".join(f"{var} (Flow {f.name!r})" for var, f in self.flows.items())


def load_app(path: str | Path) -> App:
    """Import the application file at ``path`` and collect its module-level flows."""
    p = Path(path)
    if not p.exists():
        raise AppError(f"application file {str(path)!r} does not exist")
    if p.is_dir():
        raise AppError(f"{str(path)!r} is a directory; give the Python file that defines the flow")
    if p.suffix != ".py":
        raise AppError(f"{str(path)!r} is not a Python file (.py)")
    p = p.resolve()
    module_name = "sluice_app_" + re.sub(r"\W", "_", p.stem)
    spec = importlib.util.spec_from_file_location(module_name, p)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always load
        raise AppError(f"cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    folder = str(p.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # registered before it runs, so that dataclasses and pickling inside it work
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    flows = {k: v for k, v in vars(module).items() if isinstance(v, Flow)}
    return App(Path(path), module, flows)
