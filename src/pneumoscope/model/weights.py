"""Starting weights: timm's ImageNet weights (``--pretrained``) or a local file
(``--weights FILE``), fitted to a one-logit model the way timm fits them.

A local file is a timm/Hugging Face checkpoint (``.safetensors``, or ``.pth``/``.pt``/
``.bin`` read with ``torch.load(weights_only=True)``: tensors only, never arbitrary
pickled objects), or a previous pneumoscope run folder (its ``model.safetensors``) to
fine-tune, e.g. pre-train on adults, then fine-tune on children.

Where the checkpoint was made for other inputs or classes: a classifier of another
shape (ImageNet's 1000 classes) is skipped and keeps its fresh initialisation, and the
first convolution is adapted to the model's input channels with timm's
``adapt_input_conv`` (3 -> 1 sums the RGB filters; 1 -> 3 repeats them and divides by
3). What was loaded, adapted and skipped is returned and stored in the model card.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.model.architectures import build_model, stem_and_head_keys
from pneumoscope.model.contract import RunFiles, read_card

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
MIN_MATCH = 0.5  # below this share of the model's tensors loaded, the file is for another model
# wrappers that training scripts put around a state dict, and prefixes they put on keys
STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module", "net")
PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description of the source) of a weights file or a run folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _read_run_weights(RunFiles(p))
    if not p.is_file():
        raise UserError(f"--weights file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        elif suffix in TORCH_SUFFIXES:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise UserError(
                f"--weights {p}: unknown format '{suffix}'; use .safetensors, "
                f"{', '.join(TORCH_SUFFIXES)} or a pneumoscope run folder"
            )
    except UserError:
        raise
    except Exception as exc:  # pickled objects refused by weights_only, corrupt files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"cannot read --weights {p} as plain tensors ({type(exc).__name__}: {first}); "
            "give a .safetensors file or a state_dict saved with torch.save"
        ) from None
    return _unwrap(obj, p), str(p)


def _read_run_weights(files: RunFiles) -> tuple[dict[str, torch.Tensor], str]:
    """A previous run's weights, described with its architecture when its card says it."""
    if not files.weights.is_file():
        raise UserError(
            f"--weights {files.root}: a folder must be a pneumoscope run with {RunFiles.WEIGHTS}"
        )
    arch = None
    if files.card.is_file():
        try:
            arch = read_card(files).architecture
        except UserError:  # an unreadable card does not stop fine-tuning from the weights
            arch = None
    state, _ = read_state_dict(files.weights)
    return state, f"pneumoscope run {files.root}" + (f" ({arch})" if arch else "")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint, with DataParallel/Lightning prefixes removed."""
    for _ in range(3):  # {"state_dict": {"model": {...}}} and the like
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise UserError(f"--weights {path} holds no state dict (a mapping of tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise UserError(f"--weights {path} holds no tensors")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict:
    """Copy matching tensors of ``state`` into ``net``; adapt the stem, skip a foreign head.

    Returns the report stored in the model card. Raises UserError when the file clearly
    belongs to another architecture (under half of the model's tensors fit).
    """
    own = net.state_dict()
    stems, heads = stem_and_head_keys(net)
    loaded, adapted, skipped = [], [], []
    new: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        src = state.get(key)
        if src is None:
            continue
        if src.shape == target.shape:
            new[key] = src.to(target.dtype)
            loaded.append(key)
        elif key in stems and src.ndim == 4 and src.shape[0] == target.shape[0]:
            new[key] = adapt_stem(src, int(target.shape[1])).to(target.dtype)
            adapted.append(f"{key} ({src.shape[1]} -> {target.shape[1]} input channels)")
        else:
            why = "classifier" if key in heads else "shape"
            skipped.append(
                f"{key} ({why}: {tuple(src.shape)} in the file, {tuple(target.shape)} here)"
            )
    missing = [k for k in own if k not in state and not _counter(k)]
    n_model = sum(1 for k in own if not _counter(k))
    n_fit = sum(1 for k in new if not _counter(k))
    if n_fit < MIN_MATCH * n_model:
        raise UserError(
            f"--weights {source} does not fit this model: {n_fit} of {n_model} tensors match "
            "by name and shape; is it a checkpoint of another architecture (--model)?"
        )
    net.load_state_dict(new, strict=False)
    return {
        "source": source,
        "loaded": len(loaded) + len(adapted),
        "of": len(own),
        "adapted": adapted,
        "skipped": skipped,
        "missing": missing,  # keep their fresh initialisation (the 1-logit head, usually)
        "unused": sorted(set(state) - set(own)),
    }


def adapt_stem(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """First-conv weights (O, C, k, k) for ``in_chans`` inputs, keeping the response to a
    gray image replicated over the channels: sum for 1 channel, repeat / C' for C' from 1,
    timm's ``adapt_input_conv`` otherwise."""
    w = w.float()
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    if w.shape[1] == 1:
        return w.repeat(1, in_chans, 1, 1) / in_chans
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, w)


def _counter(key: str) -> bool:
    """BatchNorm's num_batches_tracked: bookkeeping, not a weight."""
    return key.endswith("num_batches_tracked")


def initial_weights(
    net: nn.Module, architecture: str, in_chans: int, img_size: int, pretrained: bool, weights
) -> dict | None:
    """Apply --pretrained or --weights to a freshly built ``net``; None when neither."""
    if weights:
        state, source = read_state_dict(weights)
        return load_into(net, state, source)
    if not pretrained:
        return None
    ref = build_model(architecture, in_chans, img_size, pretrained=True)
    cfg = getattr(ref, "pretrained_cfg", None) or {}
    tag = cfg.get("hf_hub_id") or f"{cfg.get('architecture', architecture)}.{cfg.get('tag', '')}"
    report = load_into(net, ref.state_dict(), f"timm ImageNet weights {tag}")
    stems, heads = stem_and_head_keys(net)
    report["adapted"] = [f"{k} (3 -> {in_chans} input channels)" for k in stems if in_chans != 3]
    report["skipped"] = [f"{k} (classifier: 1000 ImageNet classes)" for k in heads]
    report["missing"] = []
    report["loaded"] -= len([k for k in heads if k in net.state_dict()])
    return report


def describe(report: dict | None) -> str:
    """One line for the console."""
    if not report:
        return "random initialisation"
    parts = [f"{report['loaded']}/{report['of']} tensors from {report['source']}"]
    if report["adapted"]:
        parts.append("adapted: " + ", ".join(report["adapted"]))
    if report["skipped"]:
        parts.append("skipped: " + ", ".join(report["skipped"]))
    return "; ".join(parts)
