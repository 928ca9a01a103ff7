"""Fine-tuned SpecMoE decoders shipped inside the package, and the one model loader.

Each shipped model lives in ``rtmoe/data/models/<name>/`` as an ordinary ``specmoe``
checkpoint (``config.toml``, ``meta.json``, ``model.safetensors``) plus a
``MODEL_CARD.md`` that states its data, recipe, test metrics and limits. The recipe that
writes the default one is ``python -m rtmoe.offline.recipes.default_model --out
runs/default --install``.

"Shipped", not "pretrained": these are complete, fine-tuned decoders; pretraining in
rtmoe means the experts' self-supervised stage (``rtmoe pretrain``,
``rtmoe.models.registry.load_expert``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from rtmoe.checkpoint import WEIGHTS_FILE
from rtmoe.errors import MissingFileError, UserError
from rtmoe.models.specmoe import LoadedSpecMoE, load_specmoe

#: Shipped models: name -> what it decodes.
SHIPPED_MODELS: dict[str, str] = {
    "default": (
        "SelfRegulationSCP1 slow-cortical-potential decoder: 6 electrodes, 3.5 s windows "
        "at 200 Hz, classes negativity/positivity (the demo's task)"
    ),
}


class UnknownModelError(UserError, KeyError, ValueError):
    """Neither a shipped model name nor an existing checkpoint folder.

    A ``KeyError`` (a name looked up) and a ``ValueError`` (a bad argument); its message
    lists the shipped names.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def shipped_path(name: str, *, must_exist: bool = True) -> Path:
    """Folder of the shipped model ``name``: ``rtmoe/data/models/<name>/``.

    Parameters
    ----------
    name : str
        A key of ``SHIPPED_MODELS``.
    must_exist : bool
        Raise when the folder holds no checkpoint (False: the path a recipe installs to).

    Raises
    ------
    UnknownModelError
        ``name`` is not a shipped model; the message lists the names.
    MissingFileError
        The package was installed without the model's weights (a ``FileNotFoundError``).
    """
    if name not in SHIPPED_MODELS:
        raise UnknownModelError(
            f"no shipped model named {name!r}; choose one of {sorted(SHIPPED_MODELS)} or pass "
            "the path of a fine-tuned checkpoint folder"
        )
    path = Path(str(resources.files("rtmoe").joinpath("data", "models", name)))
    if must_exist and not (path / WEIGHTS_FILE).is_file():
        raise MissingFileError(
            f"shipped model {name!r} has no weights at {path}; reinstall rtmoe with its package "
            "data, or rebuild it with `python -m rtmoe.offline.recipes.default_model --out "
            "runs/default --install`"
        )
    return path


def load_model(
    model: str | Path | LoadedSpecMoE, device: str | torch.device = "cpu"
) -> LoadedSpecMoE:
    """A fine-tuned SpecMoE: a shipped model by name, a checkpoint folder, or as given.

    Parameters
    ----------
    model : str, Path or LoadedSpecMoE
        A key of ``SHIPPED_MODELS`` (e.g. ``"default"``), a ``specmoe`` checkpoint folder
        (written by ``rtmoe finetune --out``), or an already loaded model (moved to
        ``device``, in eval mode).
    device : str or torch.device

    Returns
    -------
    LoadedSpecMoE
        As :func:`rtmoe.models.specmoe.load_specmoe`: model in eval mode, config
        (preprocessing), task (electrodes, window, labels), MoE settings, checkpoint.

    Raises
    ------
    UnknownModelError
        ``model`` is neither a shipped name nor an existing folder.
    """
    if isinstance(model, LoadedSpecMoE):
        return LoadedSpecMoE(
            model.model.to(device).eval(), model.config, model.task, model.moe, model.checkpoint
        )
    if isinstance(model, str) and model in SHIPPED_MODELS:
        return load_specmoe(shipped_path(model), device)
    path = Path(model)
    if not path.exists():
        raise UnknownModelError(
            f"{str(model)!r} is neither a shipped model ({sorted(SHIPPED_MODELS)}) nor an "
            "existing checkpoint folder; pass one of those names or a folder written by "
            "`rtmoe finetune --out`"
        )
    return load_specmoe(path, device)
