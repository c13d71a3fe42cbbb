"""Every config option of the project, declared once: section, key, kind, default, help.

``abcrown-plugins config --dump`` renders this table; the loader validates
against it; nothing else declares options. To add an option, add one line here.
Rules that tie several keys together are declared here too (:data:`CHECKS`)
and enforced by the loader, so no runner repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from abcrown_plugins.config.kinds import Bool, Eps, Float, Int, Kind, List, Optional, Str


@dataclass(frozen=True)
class Option:
    """One declared option."""

    key: str
    kind: Kind
    default: Any
    help: str


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    options: tuple[Option, ...]


O = Option  # short alias for the table below

SECTIONS: tuple[Section, ...] = (
    Section("general", "Run-wide settings.", (
        O("name", Str(), "run", "Experiment name; the output folder is NAME-HASH of the non-default settings."),
        O("seed", Int(), 0, "Seed for initialisation, data order and sampling."),
        O("device", Str(("auto", "cpu", "cuda")), "auto", "Torch device; auto picks cuda when available."),
        O("num_threads", Int(min=0), 0, "CPU threads for torch (0: torch's default)."),
        O("progress", Bool(), True, "Show progress bars on long loops (on stderr)."),
    )),
    Section("model", "The network: from the model zoo (`abcrown-plugins models` lists them) or your own.", (
        O("arch", Str(), "cnn_7layer", "Zoo architecture name, or your own network: onnx:PATH (an ONNX classifier) "
          "or python:MODULE:FUNCTION (FUNCTION() builds the nn.Module; MODULE is a dotted name or a .py file)."),
        O("checkpoint", Optional(Str()), None, "Start from this checkpoint's weights instead of a fresh initialisation; "
          "for python:MODULE:FUNCTION the network's state_dict (.pt/.pth, read weights_only)."),
    )),
    Section("data", "Data set and batching. Pixels are in [0,1]; normalisation is the model's first layer.", (
        O("dataset", Str(), "synthetic", "Data set name (synthetic, synthetic_gray, cifar10, svhn, mnist, fashion_mnist), or your own: npy:DIR (X.npy, y.npy; train/ for a training split) or vnnlib:DIR (a VNN-COMP benchmark's properties)."),
        O("root", Optional(Str()), None, "Folder holding real data set files (default: ./data)."),
        O("mean", Optional(List(Float())), None, "Per-channel mean the model's first layer subtracts (null: the data set's own; 0 for npy:/vnnlib: data)."),
        O("std", Optional(List(Float(min=0))), None, "Per-channel std the model's first layer divides by, each > 0 (null: the data set's own; 1 for npy:/vnnlib: data)."),
        O("num_train", Optional(Int(min=1)), None, "Use this many training images (null: all)."),
        O("num_test", Optional(Int(min=1)), None, "Use this many test images (null: all)."),
        O("batch_size", Int(min=1), 128, "Training batch size."),
        O("test_batch_size", Int(min=1), 256, "Evaluation batch size."),
    )),
    Section("training", "Training of each (sub)network.", (
        O("method", Str(("standard", "ibp", "fgsm", "crown-ibp")), "standard",
          "standard: cross-entropy; ibp: IBP certified training; fgsm: FGSM+GradAlign adversarial training "
          "(Andriushchenko & Flammarion 2020); crown-ibp: CROWN-IBP certified training (needs auto_LiRPA)."),
        O("epochs", Int(min=0), 10, "Number of training epochs (per pruning round)."),
        O("optimizer", Str(("adam", "sgd")), "adam", "Optimizer."),
        O("lr", Float(min=0), 1e-3, "Initial learning rate."),
        O("momentum", Float(min=0, max=1), 0.9, "SGD momentum."),
        O("weight_decay", Float(min=0), 0.0, "Weight decay."),
        O("lr_milestones", List(Int(min=0)), (), "Epochs at which the learning rate is multiplied by lr_decay."),
        O("lr_decay", Float(min=0), 0.1, "Learning-rate decay factor at each milestone."),
        O("grad_clip", Float(min=0), 8.0, "Clip the gradient norm to this (0: off)."),
        O("noise_sigma", Float(min=0), 0.0, "Gaussian data augmentation for randomized smoothing: add N(0, sigma^2) noise in [0,1] pixel space to every training input (0: off)."),
        O("eps", Eps(), 2 / 255, "Target L-inf radius of certified training, in [0,1] pixel units."),
        O("eps_warmup_epochs", Int(min=0), 1, "Epochs of clean training (eps = 0) before the ramp."),
        O("eps_ramp_epochs", Int(min=0), 5, "Epochs over which eps grows from 0 to training.eps."),
        O("eps_schedule", Str(("smooth", "linear")), "smooth", "Ramp shape: smooth (exponential, then linear) or linear."),
        O("ibp_init", Bool(), True, "IBP initialisation (Shi et al. 2021) when training.method is ibp."),
        O("ibp_bn_stats", Str(("centre", "clean")), "centre", "Statistics a train-mode BatchNorm normalises IBP bounds with "
          "(training.method ibp): centre (of the box centre at that layer) or clean (of the clean forward pass, as auto_LiRPA "
          "trains; the running averages, so the verified eval-mode network, are made of these)."),
        O("robust_weight", Float(min=0, max=1), 1.0, "Final weight of the IBP loss; clean loss weight is 1 - weight * eps_t / eps."),
        O("fgsm_alpha", Float(min=0), 1.25, "FGSM step size in units of the current eps (training.method fgsm)."),
        O("fgsm_init", Str(("random", "zero")), "random", "FGSM start: uniform in the eps-ball (random) or at x (zero)."),
        O("grad_align", Float(min=0), 0.2, "GradAlign coefficient lambda: lambda * (1 - cos(grad_x L(x), grad_x L(x + u))), u ~ U[-eps, eps]."),
    )),
    Section("pruning", "Iterative pruning with rewinding.", (
        O("method", Str(("magnitude", "random", "imp", "snip", "taylor", "hydra", "imp_rs", "imp_nrs", "hydra_nrs",
                         "struct_lth", "slim")), "magnitude",
          "Pruning method (`abcrown-plugins methods` describes each); magnitude is an alias of imp."),
        O("rounds", Int(min=0), 2, "Pruning rounds after the dense round (0: train the dense network only)."),
        O("rate", Float(min=0, max=1), 0.2, "Fraction of the remaining weights removed per round."),
        O("scope", Str(("conv", "conv+linear")), "conv", "Which layers' weights are prunable."),
        O("rewind", Str(("init", "early", "none")), "init", "After pruning, rewind kept weights to their initial values (init), to the dense network after pruning.rewind_epoch epochs (early), or keep training them (none: finetune mode)."),
        O("rewind_epoch", Int(min=0), 1, "Epoch of the dense round whose weights pruning.rewind early restores."),
        O("finetune_epochs", Optional(Int(min=0)), None, "Epochs per pruning round in finetune mode (pruning.rewind none; null: training.epochs)."),
        O("strategy", Str(("global", "layerwise")), "global", "Rank weights (channels) across all layers (global) or remove pruning.rate (pruning.channel_rate) of each layer (layerwise)."),
        O("channel_rate", Float(min=0, max=1), 0.11, "Fraction of the remaining channels removed per round (struct_lth, slim)."),
        O("saliency_batches", Int(min=1), 4, "Training batches whose gradients score weights for snip and taylor."),
        O("score_epochs", Optional(Int(min=0)), None, "Epochs of HYDRA score optimisation per round (null: training.epochs)."),
        O("score_lr", Float(min=0), 0.1, "Learning rate of HYDRA score optimisation (SGD, momentum 0.9)."),
    )),
    Section("regularizer", "Loss terms added to the training objective (seed 001 eq. 4-5; Network Slimming; Shi et al. 2021 warm-up).", (
        O("stability", Str(("auto", "none", "rs", "nrs")), "auto", "Stability regulariser: RSLoss, NRSLoss, none, or auto (the pruning method's: rs for imp_rs, nrs for imp_nrs and hydra_nrs)."),
        O("stability_weight", Float(min=0), 0.01, "Coefficient of the RSLoss/NRSLoss term."),
        O("slim_l1", Float(min=0), 1e-4, "L1 coefficient on BatchNorm gamma (applied after backward) when pruning.method is slim."),
        O("warmup", Float(min=0), 0.0, "lambda_0 of the warm-up regularisers of IBP training (Shi et al. 2021): "
          "lambda_0 * (1 - eps_t / eps) * (bound tightness + ReLU balance) during the radius ramp (0: off; the paper uses 0.5)."),
        O("warmup_tol", Float(min=0, max=1), 0.5, "Tolerance tau of the warm-up regularisers (Shi et al. 2021)."),
    )),
    Section("verification", "Verification of each trained (sub)network.", (
        O("eps", Eps(), 2 / 255, "L-inf radius to verify, in [0,1] pixel units (e.g. 2/255)."),
        O("method", Str(("ibp", "crown", "abcrown")), "ibp", "Bound method: ibp (built in), crown (needs auto_LiRPA), or abcrown: complete verification by α,β-CROWN (ABCROWN_HOME/ABCROWN_PYTHON) of the first num_examples test images, IBP computed beside it."),
        O("num_examples", Optional(Int(min=1)), None, "Verify the first N test images (null: the whole test split)."),
        O("batch_size", Optional(Int(min=1)), None, "Verification batch size (null: measured per model, device and thread count, cached; the verified accuracy does not depend on it)."),
        O("timeout", Float(min=0), 60.0, "Per-instance timeout of α,β-CROWN in seconds (verification.method abcrown)."),
        O("abcrown_config", Optional(Str()), None, "α,β-CROWN YAML whose solver settings every instance uses (null: CPU-sized defaults)."),
        O("pgd_steps", Int(min=0), 10, "PGD steps of the attack that gives the PGD accuracy column (0: skip the attack)."),
        O("pgd_restarts", Int(min=1), 1, "PGD restarts from random starts in the eps-ball."),
        O("pgd_alpha", Float(min=0), 0.25, "PGD step size in units of verification.eps."),
    )),
    Section("smoothing", "Randomized-smoothing certification (Cohen et al. 2019); each certificate holds with probability >= 1 - alpha.", (
        O("sigma", Float(min=0), 0.25, "Noise standard deviation in [0,1] pixel units (must be > 0)."),
        O("n0", Int(min=1), 100, "Selection samples that pick the top class."),
        O("n", Int(min=1), 100000, "Estimation samples that bound its probability (n0 <= n)."),
        O("alpha", Float(min=0, max=1), 0.001, "Failure probability of each certificate (0 < alpha < 1)."),
        O("batch_size", Optional(Int(min=1)), None, "Noisy inputs per forward pass (null: measured per model, device and thread count, cached; certificates do not depend on it)."),
        O("num_examples", Optional(Int(min=1)), None, "Certify at most this many examples (after skip; null: all)."),
        O("skip", Int(min=1), 1, "Certify every skip-th example of the split (Cohen et al. use 20 on CIFAR-10)."),
        O("split", Str(("test", "train")), "test", "Data split to certify."),
        O("radii", List(Float(min=0)), (0.0, 0.25, 0.5, 0.75, 1.0), "L2 radii of the certified-accuracy table."),
        O("engine", Str(("dense", "differential")), "dense", "dense: certify the network itself; differential: certify downstream transfer checkpoints with the exact sparse differential engine against their recorded base, beside the dense certifier (identical rows, checked) with the time each accounting saves."),
    )),
    Section("transfer", "Sparse transfer learning (seed 000): pretrain on some attributes, fine-tune a sparse delta per downstream task.", (
        O("pretrain_attributes", List(Str()), ("shape", "fg_color", "bg_dark"), "Synthetic attributes the base network learns jointly (one head each)."),
        O("tasks", List(Str()), ("size", "position", "noise_level"), "Downstream tasks: one classification per remaining synthetic attribute."),
        O("pretrain_epochs", Int(min=0), 10, "Epochs of multi-attribute pretraining (skipped when model.checkpoint is set)."),
        O("epochs", Int(min=0), 5, "Fine-tuning epochs per downstream model."),
        O("lr", Float(min=0), 1e-3, "Fine-tuning learning rate (Adam)."),
        O("patterns", List(Str(("unstructured", "structured", "groupwise"))), ("unstructured", "structured", "groupwise"), "Sparsity patterns of the delta: single weights, whole output channels (conv filter + bias + BN entries), or dense blocks."),
        O("ratios", List(Float(min=0, max=1)), (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64), "Updated-parameter ratios k (fraction of all parameters except the re-initialised classifier)."),
        O("baselines", List(Str(("direct", "dense"))), ("direct", "dense"), "Reference rows: direct (train on the downstream task from scratch), dense (update every parameter)."),
        O("mask_init", Str(("gradient", "random")), "gradient", "Initial mask: largest |gradient| of the downstream loss at the pretrained weights, or random."),
        O("mask_batches", Int(min=1), 4, "Training batches whose gradients score the initial mask."),
        O("group_shape", List(Int(min=1)), (4, 4), "Group-wise blocks: [output channels, input channels] (times the full kernel for convolutions)."),
        O("rigl", Bool(), True, "RigL dynamic masks: periodically drop the active units with the smallest |delta|, grow those with the largest |gradient|, keeping the count."),
        O("rigl_interval", Int(min=1), 20, "Optimizer steps between RigL mask updates."),
        O("rigl_drop_fraction", Float(min=0, max=1), 0.3, "Fraction of active units swapped at the first update (cosine decay to 0)."),
        O("rigl_end", Float(min=0, max=1), 0.75, "Fraction of the fine-tuning steps after which the mask stays fixed."),
        O("diffstab_weight", Float(min=0), 1.0, "Weight of the DiffStab regulariser (seed 000 eq. 1-2; 0: off)."),
        O("diffstab_eps", Eps(), 2 / 255, "L-inf radius of the IBP bounds that DiffStab compares, in [0,1] pixel units."),
        O("few_shot", Bool(), False, "Few-shot transfer: fine-tune on transfer.few_shot_fraction of the downstream training data."),
        O("few_shot_fraction", Float(min=0, max=1), 0.01, "Fraction of downstream training data in few-shot mode (stratified)."),
        O("frozen_prefix", Optional(Int(min=0)), None, "Verification-aware allocation: the first N parametrised layers (forward order) get no update, so their outputs are reused bit for bit; the budget k goes to later layers. null: per pattern and k, the largest N whose later layers still hold the k budget; 0: any layer may change."),
        O("certify", Bool(), True, "Certify every downstream model with randomized smoothing (smoothing section) on smoothing.num_examples test images."),
        O("certify_radius", Float(min=0), 0.25, "L2 radius whose certified accuracy the transfer summary reports."),
    )),
    Section("executor", "Where embarrassingly parallel work runs (α,β-CROWN instances, certify images); never changes results.", (
        O("kind", Str(("local", "ray")), "local", "local: worker processes on this machine; ray: a Ray cluster (extra [distributed])."),
        O("workers", Int(min=1, max=1024), 1, "Local worker processes (1: in this process)."),
        O("threads", Int(min=0), 0, "Threads per worker (0: cores // workers, so workers x threads <= cores)."),
        O("ray_address", Optional(Str()), None, "Address of a running Ray cluster to join (null: start a local one)."),
        O("retries", Int(min=0), 2, "Extra attempts for a task whose worker died or that raised."),
    )),
    Section("output", "Where and what to write.", (
        O("dir", Optional(Str()), None, "Output folder (default: results/NAME-HASH)."),
        O("plot", Bool(), True, "Write the verified-accuracy-vs-remaining-weights plot (PNG)."),
        O("keep_checkpoints", Bool(), True, "Keep one checkpoint per pruning round."),
    )),
)

SECTION_BY_NAME = {s.name: s for s in SECTIONS}


@dataclass(frozen=True)
class Check:
    """A rule over several keys: ``holds(cfg)`` must be true, else ``message(cfg)`` (one line) is the error."""

    keys: tuple[str, ...]
    holds: Callable[[Any], bool]
    message: Callable[[Any], str]


DATASET_TASK = "dataset:"
"""Prefix of a transfer task that is a whole data set (``dataset:svhn``) rather than a synthetic attribute."""

CHECKS: tuple[Check, ...] = (
    Check(("pruning.rewind", "pruning.rewind_epoch", "training.epochs"),
          lambda c: not (c.pruning.rewind == "early" and c.pruning.rewind_epoch > c.training.epochs),
          lambda c: f"pruning.rewind_epoch {c.pruning.rewind_epoch} is after the last epoch of the dense round "
                    f"(training.epochs {c.training.epochs}); choose 0..{c.training.epochs}"),
    Check(("transfer.tasks",), lambda c: bool(c.transfer.tasks),
          lambda c: "transfer.tasks is empty; name at least one downstream attribute"),
    Check(("regularizer.warmup", "training.method"),
          lambda c: c.regularizer.warmup == 0 or c.training.method in ("ibp", "crown-ibp"),
          lambda c: f"regularizer.warmup regularises the bounds of certified training; training.method "
                    f"'{c.training.method}' computes none: set training.method ibp (or crown-ibp) or regularizer.warmup 0"),
    Check(("regularizer.warmup_tol",), lambda c: c.regularizer.warmup_tol > 0,
          lambda c: "regularizer.warmup_tol must be in (0, 1], got 0"),
    Check(("transfer.group_shape",), lambda c: len(c.transfer.group_shape) == 2,
          lambda c: f"transfer.group_shape must have two entries [out, in], got {list(c.transfer.group_shape)}"),
    Check(("transfer.tasks", "model.checkpoint"),
          lambda c: bool(c.model.checkpoint) or not any(t.startswith(DATASET_TASK) for t in c.transfer.tasks),
          lambda c: "a 'dataset:NAME' transfer task needs a pretrained base network: set model.checkpoint "
                    "(e.g. from `abcrown-plugins train` on the source data set)"),
)

WARNINGS: tuple[Check, ...] = (
    Check(("training.method", "training.epochs", "training.eps_warmup_epochs", "training.eps_ramp_epochs"),
          lambda c: c.training.method == "standard"
          or c.training.epochs >= c.training.eps_warmup_epochs + c.training.eps_ramp_epochs,
          lambda c: f"training.epochs {c.training.epochs} ends before the eps warm-up and ramp do "
                    f"(eps_warmup_epochs {c.training.eps_warmup_epochs} + eps_ramp_epochs "
                    f"{c.training.eps_ramp_epochs}), so {c.training.method} training never reaches training.eps "
                    f"{c.training.eps:.6g}; raise training.epochs or shorten the warm-up/ramp"),
)
"""Rules that may be broken on purpose but usually are a mistake: the commands that train print
``message(cfg)`` as a warning (:func:`abcrown_plugins.config.config_warnings`) and go on."""
