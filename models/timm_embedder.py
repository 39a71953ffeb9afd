"""A timm model as a feature extractor for embed.py: built without its classifier
(num_classes=0, so a forward gives the pooled pre-logits features) and loaded from a
local weights file; nothing is downloaded.

The weights file: a state dict saved with torch.save, a checkpoint holding one under
``model``, ``state_dict`` or ``module`` (main.py's checkpoints, timm's, DeiT's), or a
``.safetensors`` file (what the Hugging Face hub serves). Prefixes left by DDP
(``module.``) and torch.compile (``_orig_mod.``) are removed. The classifier's weights
(the keys under timm's ``pretrained_cfg["classifier"]``) are dropped; every other key must
fit the model exactly, or the error names the file and the first keys that do not.
"""
import ast
import hashlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

_WRAPPERS = ("model", "state_dict", "module")  # where checkpoints keep the state dict
_PREFIXES = ("module.", "_orig_mod.")


class EmbedderError(ValueError):
    """A model name, a weights file or a model argument that cannot be used, named."""


@dataclass(frozen=True)
class Embedder:
    model: nn.Module
    name: str
    mean: Tuple[float, float, float]  # the normalisation the weights were trained with, on [0, 1] pixels
    std: Tuple[float, float, float]
    input_size: int  # the side the weights were trained at (pretrained_cfg's input_size)
    dropped: List[str]  # the classifier keys removed from the weights


def parse_model_kwargs(items: Sequence[str]) -> Dict[str, object]:
    """`KEY=VALUE` pairs (timm train.py's --model-kwargs): VALUE a Python literal (True,
    0.1, (224, 224)) or else a string."""
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise EmbedderError(f"--model-kwargs: {item!r} is not KEY=VALUE")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of the weights file `path` (module docstring), prefixes removed."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling and safetensors raise many kinds
        raise EmbedderError(f"--weights {path}: cannot be read as a state dict: {type(e).__name__}: {e}") from None
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EmbedderError(f"--weights {path}: expected a state dict (parameter name -> tensor), or a checkpoint "
                            f"holding one under {', '.join(_WRAPPERS)}")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def sha256_of(path: str, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listed(keys: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def build_embedder(name: str, weights: str, kwargs: Dict[str, object]) -> Embedder:
    """timm's `name` without its classifier, with the weights of `weights` (module
    docstring). EmbedderError naming the model or the file."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        hint = f"; e.g. python -c \"import timm; print(timm.list_models('*{name.split('_')[0]}*'))\""
        raise EmbedderError(f"--model {name}: timm {timm.__version__} cannot build it: {e}{hint}") from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    classifiers = cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = read_state_dict(weights)
    dropped = sorted(k for k in state if any(k.startswith(c + ".") for c in classifiers))
    state = {k: v for k, v in state.items() if k not in dropped}
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state)
    misshapen = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"lack {len(missing)} of the model's keys ({_listed(missing)})")
    if unexpected:
        problems.append(f"hold {len(unexpected)} keys the model does not have ({_listed(unexpected)})")
    if misshapen:
        k = misshapen[0]
        problems.append(f"have {len(misshapen)} tensors of another shape ({k}: {tuple(state[k].shape)} in the file, "
                        f"{tuple(own[k].shape)} in the model)")
    if problems:
        raise EmbedderError(f"--weights {weights} do not fit timm's {name}: they {'; they '.join(problems)}. Is "
                            f"--model the architecture these weights were trained for (and --model-kwargs its "
                            f"settings)?")
    model.load_state_dict(state, strict=True)
    model.eval()
    size = cfg.get("input_size") or (3, 224, 224)
    return Embedder(model=model, name=name,
                    mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
                    std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
                    input_size=int(size[-1]), dropped=dropped)


@torch.no_grad()
def feature_width(model: nn.Module, size: int, name: str) -> int:
    """The width of `model`'s features of one size x size image (a forward on the CPU);
    EmbedderError when the model cannot take that size."""
    try:
        return int(model(torch.zeros(1, 3, size, size)).flatten(1).shape[1])
    except (RuntimeError, ValueError, AssertionError) as e:
        raise EmbedderError(f"--model {name} cannot embed a {size} x {size} view: {e} (give --img-size, or "
                            f"--model-kwargs such as dynamic_img_size=True)") from None
