"""Several trained networks as one: the logit is the mean of the members' logits.

A mean of linear heads is itself a linear head on the members' features side by side:
mean_k (w_k . f_k + b_k) = [w_1 / K, ..., w_K / K] . [f_1, ..., f_K] + mean_k b_k. So an
ensemble is one network with timm's interface (``forward_features``, ``forward_head``,
``get_classifier``): its features are the members' pooled features concatenated (what the
out-of-distribution guard measures), its classifier the composed linear layer, and every
command (calibrate, evaluate, predict, explain, export to one ONNX graph, serve, the PACS
worker) takes it as it takes any network. Its architecture name lists the members:
``ensemble(resnet18,resnet18)``.
"""

from __future__ import annotations

import torch
from torch import nn

PREFIX, SUFFIX = "ensemble(", ")"


def is_ensemble_name(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(SUFFIX)


def ensemble_name(members: list[str]) -> str:
    return PREFIX + ",".join(members) + SUFFIX


def member_names(name: str) -> list[str]:
    """``ensemble(a,b)`` -> ["a", "b"]."""
    return [m.strip() for m in name[len(PREFIX) : -len(SUFFIX)].split(",") if m.strip()]


class Ensemble(nn.Module):
    """K one-logit networks taking the same films; ``compose_head`` sets the classifier
    from the members' own (the state dict then holds both, so a saved ensemble reloads
    without composing again).

    Members trained with other normalisation statistics (``dataset`` statistics are
    measured on a seeded sample, so they differ a little by seed) get their own input:
    the ensemble's input is normalised with the first member's mean and std, and member k
    sees ``x * scale[k] + shift[k]``, which is exactly the film normalised with its own
    (``set_normalisations``; identity until set).
    """

    def __init__(self, members: list[nn.Module], in_chans: int = 1):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.register_buffer("input_scale", torch.ones(len(members), in_chans))
        self.register_buffer("input_shift", torch.zeros(len(members), in_chans))
        # the width of what each member's classifier reads (seed_cnn's dense head makes it
        # differ from the channels of its feature map)
        self.num_features = sum(int(m.get_classifier().in_features) for m in members)
        self.head = nn.Linear(self.num_features, 1)

    @torch.no_grad()
    def compose_head(self) -> None:
        """The classifier whose logit is the mean of the members' logits."""
        k = len(self.members)
        weights, biases = [], []
        for m in self.members:
            fc = m.get_classifier()
            weights.append(fc.weight.reshape(1, -1) / k)
            biases.append(fc.bias.reshape(1) if fc.bias is not None else torch.zeros(1))
        self.head.weight.copy_(torch.cat(weights, dim=1))
        self.head.bias.copy_(torch.stack(biases).mean())

    @torch.no_grad()
    def set_normalisations(self, means: list, stds: list) -> None:
        """Member k's (mean, std) per channel; the ensemble's input uses member 0's."""
        mean = torch.as_tensor(means, dtype=torch.float32).reshape(len(self.members), -1)
        std = torch.as_tensor(stds, dtype=torch.float32).reshape(len(self.members), -1)
        self.input_scale.copy_((std[0] / std).expand_as(self.input_scale))
        self.input_shift.copy_(((mean[0] - mean) / std).expand_as(self.input_shift))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, m in enumerate(self.members):
            a = self.input_scale[k].view(1, -1, 1, 1)
            b = self.input_shift[k].view(1, -1, 1, 1)
            out.append(m.forward_features(x * a + b))
        return out

    def forward_head(self, feats: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        pooled = [
            m.forward_head(f, pre_logits=True) for m, f in zip(self.members, feats, strict=True)
        ]
        joined = torch.cat([p.flatten(1) for p in pooled], dim=1)
        return joined if pre_logits else self.head(joined)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
