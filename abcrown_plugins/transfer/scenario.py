"""The multi-attribute transfer scenario on the embedded synthetic data set (seed 000's CelebV-HQ protocol).

Every synthetic image carries several attributes (shape, colour, background,
size, position, noise level; :data:`abcrown_plugins.data.synthetic.ATTRIBUTES`).
Pretraining learns some of them jointly, one classification head per attribute
(the logits of the heads are concatenated); every remaining attribute is one
downstream classification task on the same kind of images (the seed samples
40 CelebV-HQ attributes for pretraining and transfers to each of the others).

Nothing is downloaded; the images are the generator's, so the scenario runs
anywhere. :func:`dataset_for_checkpoint` gives back the split a checkpoint
was trained for (plain data sets, or a downstream attribute task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from abcrown_plugins.checkpoints import ModelMeta
from abcrown_plugins.data import DataInfo, ImageDataset, load_dataset
from abcrown_plugins.data.synthetic import ATTRIBUTES
from abcrown_plugins.errors import UserError

__all__ = ["SCENARIO", "MultiAttributeSet", "attribute_task", "check_attributes", "dataset_for_checkpoint",
           "head_accuracy", "multi_head_loss", "pretrain_set"]

SCENARIO = "synthetic_attributes"
_BASES = ("synthetic", "synthetic_gray")


@dataclass(frozen=True)
class MultiAttributeSet:
    """Images with one integer target per head: ``targets`` is ``int64`` N x heads.

    ``heads`` lists ``(attribute, number of values)``; the model's logits are the
    heads' logits concatenated in this order (``sum(values)`` outputs).
    """

    images: ImageDataset
    targets: Tensor
    heads: tuple[tuple[str, int], ...]

    @property
    def num_outputs(self) -> int:
        return sum(k for _, k in self.heads)


def check_attributes(pretrain: Sequence[str], tasks: Sequence[str]) -> None:
    """UserError unless both lists name known, distinct attributes and do not overlap."""
    valid = ", ".join(ATTRIBUTES)
    for a in [*pretrain, *tasks]:
        if a not in ATTRIBUTES:
            raise UserError(f"unknown synthetic attribute '{a}'; valid: {valid}")
    if not pretrain:
        raise UserError("transfer.pretrain_attributes is empty; name at least one attribute to pretrain on")
    if len(set(pretrain)) != len(pretrain) or len(set(tasks)) != len(tasks):
        raise UserError("transfer.pretrain_attributes and transfer.tasks must not repeat an attribute")
    overlap = sorted(set(pretrain) & set(tasks))
    if overlap:
        raise UserError(f"attributes {overlap} are both pretrained and downstream tasks; a downstream task must be "
                        f"an attribute the base network did not learn")


def _require_attributes(base: ImageDataset, names: Sequence[str]) -> None:
    missing = [a for a in names if a not in base.attributes]
    if missing:
        raise UserError(f"data set '{base.info.name}' has no attributes {missing}; the transfer scenario needs "
                        f"data.dataset synthetic or synthetic_gray")


def pretrain_set(base: ImageDataset, attributes: Sequence[str]) -> MultiAttributeSet:
    """The pretraining view of ``base``: targets = the named attributes, one head each."""
    _require_attributes(base, attributes)
    targets = torch.stack([base.attributes[a] for a in attributes], dim=1)
    return MultiAttributeSet(base, targets, tuple((a, len(ATTRIBUTES[a])) for a in attributes))


def attribute_task(base: ImageDataset, attribute: str) -> ImageDataset:
    """The downstream task of ``attribute``: the same images, labels = the attribute's values."""
    _require_attributes(base, [attribute])
    names = ATTRIBUTES[attribute]
    info = DataInfo(f"{base.info.name}:{attribute}", len(names), base.info.channels, base.info.size,
                    base.info.mean, base.info.std, tuple(names))
    return ImageDataset(base.images, base.attributes[attribute].clone(), info, base.attributes)


def multi_head_loss(logits: Tensor, targets: Tensor, heads: Sequence[tuple[str, int]]) -> Tensor:
    """Mean over heads of the cross-entropy of each head's slice of ``logits`` (N x sum(values))."""
    out, start = logits.new_zeros(()), 0
    for h, (_, k) in enumerate(heads):
        out = out + F.cross_entropy(logits[:, start:start + k], targets[:, h])
        start += k
    return out / len(heads)


def head_accuracy(logits: Tensor, targets: Tensor, heads: Sequence[tuple[str, int]]) -> Tensor:
    """Number of correct predictions per head (float, (heads,))."""
    out, start = [], 0
    for h, (_, k) in enumerate(heads):
        out.append((logits[:, start:start + k].argmax(1) == targets[:, h]).sum().float())
        start += k
    return torch.stack(out)


def dataset_for_checkpoint(meta: ModelMeta, split: str, root: str | None, num: int | None,
                           seed: int) -> ImageDataset:
    """The ``split`` a checkpoint's model classifies: its data set, or its downstream attribute task."""
    task = meta.task
    if task is None:
        return load_dataset(meta.dataset, split, root, num, seed=seed)
    if task.scenario != SCENARIO:
        raise UserError(f"checkpoint task scenario {task.scenario!r} is unknown (expected {SCENARIO!r})")
    if task.multi_head:
        raise UserError("this checkpoint is a multi-attribute base network (one head per attribute); "
                        "certify a downstream checkpoint of `abcrown-plugins transfer` instead")
    return attribute_task(load_dataset(task.base_dataset, split, root, num, seed=seed), task.attribute)
