"""Fine-tuned SpecMoE models shipped inside the package, loadable by name.

Each lives in ``rtmoe/data/models/<name>/`` as an ordinary ``specmoe`` checkpoint
(``config.toml``, ``meta.json``, ``model.safetensors``) plus a ``MODEL_CARD.md`` that
states its data, recipe, test metrics and limits. The recipe that writes the default
one is ``python -m rtmoe.offline.recipes.default_model --out runs/default --install``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from rtmoe.models.specmoe import LoadedSpecMoE, load_specmoe

#: Shipped models: name -> what it decodes.
PRETRAINED: dict[str, str] = {
    "default": (
        "SelfRegulationSCP1 slow-cortical-potential decoder: 6 electrodes, 3.5 s windows "
        "at 200 Hz, classes negativity/positivity (the demo's task)"
    ),
}


def pretrained_path(name: str, *, must_exist: bool = True) -> Path:
    """Folder of the shipped model ``name``: ``rtmoe/data/models/<name>/``.

    Parameters
    ----------
    name : str
        A key of ``PRETRAINED``.
    must_exist : bool
        Raise when the folder holds no checkpoint (False: the path a recipe installs to).

    Raises
    ------
    KeyError
        ``name`` is not a shipped model; the message lists the names.
    FileNotFoundError
        The package was installed without the model's weights.
    """
    if name not in PRETRAINED:
        raise KeyError(
            f"no shipped model named {name!r}; choose one of {sorted(PRETRAINED)} or pass "
            "the path of a fine-tuned checkpoint folder"
        )
    path = Path(str(resources.files("rtmoe").joinpath("data", "models", name)))
    if must_exist and not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"shipped model {name!r} has no weights at {path}; reinstall rtmoe with its package "
            "data, or rebuild it with `python -m rtmoe.offline.recipes.default_model --out "
            "runs/default --install`"
        )
    return path


def load_pretrained(name_or_path: str | Path, device: str | torch.device = "cpu") -> LoadedSpecMoE:
    """Load a shipped model by name, or a fine-tuned checkpoint folder by path.

    Parameters
    ----------
    name_or_path : str or Path
        A key of ``PRETRAINED`` (e.g. ``"default"``), or a ``specmoe`` checkpoint folder.
    device : str or torch.device

    Returns
    -------
    LoadedSpecMoE
        As :func:`rtmoe.models.specmoe.load_specmoe`: model in eval mode, config
        (preprocessing), task (electrodes, window, labels), MoE settings, checkpoint.
    """
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        return load_specmoe(pretrained_path(name_or_path), device)
    path = Path(name_or_path)
    if not path.exists():
        raise KeyError(
            f"{str(name_or_path)!r} is neither a shipped model ({sorted(PRETRAINED)}) nor an "
            "existing checkpoint folder; pass one of those names or a folder written by "
            "`rtmoe finetune --out`"
        )
    return load_specmoe(path, device)
