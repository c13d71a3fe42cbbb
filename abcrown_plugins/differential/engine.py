"""The exact sparse differential engine: fine-tuned networks' outputs from the base's work.

Given a pretrained base network and T fine-tuned networks of the same
architecture (sparse deltas, new classifiers; see :mod:`.delta`), the engine
computes every fine-tuned network's logits on a batch while doing the base's
work once:

1. **Shared prefix.** Every module before a task's first changed module sees the
   same input in the base and in the task, so its output is the base's, bit for
   bit (eval mode: BatchNorm uses running statistics). The base forward runs once
   per batch, only as far as some task needs it, and serves all T tasks.
2. **Channel-sparse changes.** A changed Conv2d/Linear/BatchNorm whose changed
   output channels are few recomputes only those channels (with the fine-tuned
   weights, on the shared input); the activation is then "the base's, except at
   channels ``idx``". Per-channel modules (BatchNorm, ReLU, pooling), Flatten and
   residual additions keep that form.
3. **Differential products.** A Conv2d/Linear whose input differs from the base's
   only at channels ``idx`` computes ``base_out + W[:, idx] * (x - x_base)[idx]``
   (exact in real arithmetic by linearity; zero padding is linear too), at a
   cost proportional to ``len(idx) / C_in``.
4. **Dense switch.** When the fraction of channels to recompute (output rows plus,
   for a differential product, input channels) passes ``break_even``, the module
   runs densely on the materialised input instead: no sparse path is used past
   the point where it stops paying (default :data:`BREAK_EVEN`, measured by
   ``tools/bench_smoothing.py``). Computing live, every base activation past a
   task's first change costs a base layer, so the threshold drops by 1/T for T
   tasks sharing the pass (and by :data:`LIVE_OVERHEAD` for the copies): a
   single task alone runs densely from its first change
   (:meth:`DifferentialEngine._effective_break_even`).

Exactness. Shared values, and modules recomputed densely from a shared input,
are bitwise those of the dense fine-tuned network. Recomputed channel subsets
and differential products may differ from it in float32 rounding (tests bound
the difference by 1e-4; measured: at most 4e-7 of the logit scale, ~1e-5
absolute). So that argmax decisions, hence smoothing counts and certificates,
are *identical* to the dense network's, the logits of every task that used such
a step go through a near-tie guard: if on any sample of a batch the top-two
margin is at most ``tie_tol * scale`` (``scale``: the magnitude of the final
layer's products, see ``_guard``; default :data:`TIE_TOL` = 1e-5, 25x the
largest relative difference measured), that task's logits for the whole batch
are recomputed by its dense modules from the shared prefix on, which is bit for
bit what the dense certifier computes. Outside near ties, a per-logit error
below half the tolerance cannot change the argmax. The tolerance is a measured
float32 error scale, not a proven bound: the tests and the benchmark compare
every count with the dense certifier's and report any mismatch.
``stats.fallbacks`` counts the recomputed batches; ``tie_tol < 0`` switches the
guard off (for tests that measure the raw difference).

Supported structure: an ``nn.Sequential`` of leaves (Conv2d, Linear,
BatchNorm1d/2d in eval mode, ReLU and other element-wise activations, pooling,
Flatten, Identity, Dropout, and anything else as an opaque module recomputed
densely once it or its input changes) and the zoo's residual ``BasicBlock``,
whose inside is followed module by module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.differential.delta import Change, module_changes
from abcrown_plugins.errors import UserError
from model_zoo.layers import BasicBlock

#: Default fraction of channels above which a changed module runs densely (see module doc). Measured
#: on cnn_7layer (tools/bench_smoothing.py, ``engine_break_even``): replay times are flat between 0.5
#: and 0.75 and worse at 1.0 once half of the channels change; channel-subset convolutions alone stay
#: faster than the dense one up to 7/8 of the channels.
BREAK_EVEN = 0.75
#: Live computation lowers the break-even by 1/T and by this (measured on cnn_7layer, 10 tasks with
#: uniform structured 8 % deltas: shared pass 3.2 s at an effective 0.25-0.4, 4.0 s at 0.65, dense 3.6 s).
LIVE_OVERHEAD = 0.25
#: Default relative top-two margin at or below which a batch is recomputed densely (see ``_guard``).
TIE_TOL = 1e-5
#: Output-channel subsets of a conv are padded to a multiple of this (oneDNN runs such blocks faster).
ROW_MULTIPLE = 16

_CHANNELWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
                nn.Dropout, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_EMPTY = torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class _Leaf:
    path: str


@dataclass(frozen=True)
class _Residual:
    path: str
    main: tuple[str, ...]
    shortcut: tuple[str, ...]
    post: str


@dataclass
class EngineStats:
    """Counters since construction: batches seen per task and dense fallbacks at near ties."""

    batches: int = 0
    fallbacks: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class TaskPlan:
    """Static facts about one task (for reports): where its changes start and what it reuses."""

    first_changed: str | None     # path of the first changed top-level module (None: identical to base)
    shared_fraction: float        # fraction of top-level modules before the first change
    base_paths: tuple[str, ...]   # base activations the task reads
    exact: bool                   # only bitwise-exact steps (shared modules, dense recomputation)


@dataclass(frozen=True)
class _Plan:
    needs: list[set[str]]
    classes: list[int]
    exact: list[bool]

    def stop(self, tasks: Sequence[int]) -> int:
        """Top-level modules of the base to run for ``tasks``."""
        return max((_top(p) for t in tasks for p in self.needs[t]), default=-1) + 1


@dataclass(frozen=True)
class _Run:
    """What one computation of a task's logits reads besides the task (made per call, never stored).

    ``be``: the effective break-even of the call
    (:meth:`DifferentialEngine._effective_break_even`); ``base``: the base
    activation at a path.
    """

    be: float
    base: Callable[[str], Tensor]


class _Act:
    """A task's activation: the base's (``base``) except at positions ``idx`` of dim 1 (values ``vals``).

    ``idx`` empty: identical to the base (shared). ``idx`` None: differs
    everywhere, ``vals`` is the full tensor and ``base`` is unused. ``exact``:
    every step that produced it is bitwise exact (shared modules, dense
    recomputation); a recomputed channel subset or a differential product
    upstream clears it, and every step passes it on.
    """

    __slots__ = ("base", "idx", "vals", "exact")

    def __init__(self, base: Tensor | None, idx: Tensor | None, vals: Tensor | None, exact: bool):
        self.base, self.idx, self.vals, self.exact = base, idx, vals, exact

    @classmethod
    def shared(cls, base: Tensor, exact: bool) -> "_Act":
        return cls(base, _EMPTY, None, exact)

    @classmethod
    def dense(cls, vals: Tensor, exact: bool) -> "_Act":
        return cls(None, None, vals, exact)

    @property
    def is_dense(self) -> bool:
        return self.idx is None

    @property
    def is_shared(self) -> bool:
        return self.idx is not None and self.idx.numel() == 0

    def full(self) -> Tensor:
        if self.idx is None:
            return self.vals
        if self.idx.numel() == 0:
            return self.base
        x = self.base.clone()
        x[:, self.idx.to(x.device)] = self.vals
        return x

    def at(self, u: Tensor) -> Tensor:
        """Values at positions ``u`` (sorted, a superset of ``idx``) of dim 1."""
        out = self.base[:, u.to(self.base.device)]
        if self.idx.numel():
            out[:, torch.searchsorted(u, self.idx).to(out.device)] = self.vals
        return out


def _diff(base: Tensor, idx: Tensor, vals: Tensor, exact: bool) -> _Act:
    if idx.numel() == base.shape[1]:  # every position differs: plain dense
        return _Act.dense(vals, exact)
    return _Act(base, idx, vals, exact)


def _union(a: Tensor, b: Tensor) -> Tensor:
    if a.numel() == 0:
        return b
    if b.numel() == 0:
        return a
    return torch.unique(torch.cat([a, b]))


def _top(path: str) -> int:
    return int(path.split(".")[0].split(":")[0]) if path != "input" else -1


class _Everything:
    def __contains__(self, item) -> bool:
        return True


class DifferentialEngine:
    """Logits of T fine-tuned networks on a batch, sharing the base network's work.

    ``base`` and every task must be ``nn.Sequential`` models of the same
    architecture in eval mode (see module doc); a task's final classifier may
    differ in shape. ``forward(x)`` returns one ``(B, num_classes_t)`` tensor
    per task, equal to ``task_t(x)`` up to float32 rounding, with argmaxes
    identical to ``task_t(x).argmax(1)`` (near-tie guard). The engine holds
    references to the models: do not change their weights afterwards.

    A call's own facts travel as values: its effective break-even and base
    activations in a :class:`_Run` argument, whether a task's steps were
    bitwise exact on the :class:`_Act` they return. Between calls the engine
    keeps only caches (dry-run plans, weight subsets) and :attr:`stats`.
    """

    def __init__(self, base: nn.Module, tasks: Sequence[nn.Module], *, break_even: float = BREAK_EVEN,
                 tie_tol: float = TIE_TOL, row_multiple: int = ROW_MULTIPLE):
        if not isinstance(base, nn.Sequential):
            raise UserError(f"the differential engine needs an nn.Sequential base network (the zoo's models "
                            f"are), got {type(base).__name__}")
        if not tasks:
            raise UserError("the differential engine needs at least one fine-tuned network")
        if not 0.0 <= break_even <= 1.0:
            raise UserError(f"break_even must be in [0, 1], got {break_even}")
        for name, m in [("base", base)] + [(f"task {i}", t) for i, t in enumerate(tasks)]:
            if any(mod.training for mod in m.modules()):
                raise UserError(f"{name} network is in training mode; call .eval() first (BatchNorm in training "
                                f"mode makes outputs depend on the batch)")
        self.base = base
        self.tasks = list(tasks)
        self.break_even = float(break_even)
        self.tie_tol = float(tie_tol)
        self.row_multiple = max(1, int(row_multiple))
        self.stats = EngineStats(fallbacks=[0] * len(self.tasks))
        self._base_mods = dict(base.named_modules())
        self._task_mods = [dict(t.named_modules()) for t in self.tasks]
        self._ir = self._build_ir(base)
        self._changes = [module_changes(base, t) for t in self.tasks]
        self._first = [self._first_changed(ch) for ch in self._changes]
        self._changed_steps = [{s.path for s in self._ir if self._step_changed(ch, s)} for ch in self._changes]
        self._cache: list[dict] = [dict() for _ in self.tasks]
        self._plans: dict[tuple, _Plan] = {}

    # -- structure -----------------------------------------------------------------------------

    def _build_ir(self, base: nn.Sequential) -> list:
        ir = []
        for name, m in base.named_children():
            if isinstance(m, BasicBlock):
                short = tuple(f"{name}.shortcut.{n}" for n, _ in m.shortcut.named_children())
                ir.append(_Residual(name, tuple(f"{name}.{n}" for n in ("conv1", "bn1", "relu1", "conv2", "bn2")),
                                    short, f"{name}.relu2"))
            else:
                ir.append(_Leaf(name))
        return ir

    def _step_changed(self, changes: dict[str, Change], step) -> bool:
        return any(p == step.path or p.startswith(step.path + ".") for p in changes)

    def _first_changed(self, changes: dict[str, Change]) -> int | None:
        for i, step in enumerate(self._ir):
            if self._step_changed(changes, step):
                return i
        return None

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def _in_path(self, i: int) -> str:
        return "input" if i == 0 else self._ir[i - 1].path

    # -- the base network ----------------------------------------------------------------------

    def _base_forward(self, x: Tensor, needed, stop: int) -> dict[str, Tensor]:
        """The base's activations at ``needed`` paths, running the first ``stop`` top-level modules."""
        mods = self._base_mods
        rec: dict[str, Tensor] = {}
        if "input" in needed:
            rec["input"] = x
        h = x
        for step in self._ir[:stop]:
            if isinstance(step, _Residual) and any(p in needed for p in (*step.main, *step.shortcut,
                                                                         step.path + ":add")):
                a = h
                for p in step.main:
                    a = mods[p](a)
                    if p in needed:
                        rec[p] = a
                s = h
                for p in step.shortcut:
                    s = mods[p](s)
                    if p in needed:
                        rec[p] = s
                z = a + s
                if step.path + ":add" in needed:
                    rec[step.path + ":add"] = z
                h = mods[step.post](z)
            else:
                h = mods[step.path](h)
            if step.path in needed:
                rec[step.path] = h
            if isinstance(step, _Residual) and step.post in needed:
                rec[step.post] = h
        return rec

    def _effective_break_even(self, mode: str, num_tasks: int) -> float:
        """``trace``: base activations are recorded already, so ``break_even`` applies as is.
        ``live``: every base activation past a task's first change costs one base layer, shared
        by the ``num_tasks`` tasks of the call, plus the gathers and copies of the large early
        activations, so the break-even drops by ``1 / num_tasks + LIVE_OVERHEAD`` (one task
        alone: dense from its first change on)."""
        if mode == "trace":
            return self.break_even
        if mode == "live":
            return self.break_even - 1.0 / max(num_tasks, 1) - LIVE_OVERHEAD
        raise ValueError(f"mode must be 'live' or 'trace', got {mode!r}")

    def _plan(self, shape: tuple[int, ...], device, dtype, be: float) -> _Plan:
        """Per task: the base paths it reads, its class count and whether it is exact by
        construction, found by a dry run on one zero sample; and the base depth needed."""
        key = (tuple(shape), str(device), dtype, be)
        if key not in self._plans:
            x = torch.zeros((1, *shape), device=device, dtype=dtype)
            with torch.no_grad():
                full = self._base_forward(x, _Everything(), len(self._ir))
            needs, classes, exact = [], [], []
            for t in range(self.num_tasks):
                seen: set[str] = set()

                def get(p, seen=seen):
                    seen.add(p)
                    return full[p]

                with torch.no_grad():
                    logits, _, task_exact = self._raw_task(t, _Run(be, get))
                classes.append(int(logits.shape[1]))
                needs.append(seen)
                exact.append(task_exact)
            self._plans[key] = _Plan(needs, classes, exact)
        return self._plans[key]

    def _default_plan(self, input_shape: Sequence[int], mode: str = "trace", num_tasks: int = 1) -> _Plan:
        p = next(self.base.parameters())
        return self._plan(tuple(input_shape), p.device, p.dtype, self._effective_break_even(mode, num_tasks))

    def num_classes(self, t: int, input_shape: Sequence[int]) -> int:
        """Number of logits of task ``t`` for inputs of shape ``(C, H, W)``."""
        return self._default_plan(input_shape).classes[t]

    def plans(self, input_shape: Sequence[int], mode: str = "trace") -> list[TaskPlan]:
        """Static plan of each task for inputs of shape ``(C, H, W)`` (``mode``: see ``forward_from``)."""
        plan = self._default_plan(input_shape, mode, self.num_tasks)
        out = []
        for t in range(self.num_tasks):
            f = self._first[t]
            out.append(TaskPlan(None if f is None else self._ir[f].path,
                                1.0 if f is None else f / len(self._ir), tuple(sorted(plan.needs[t])),
                                plan.exact[t]))
        return out

    # -- per-task interpretation ---------------------------------------------------------------

    def _kind(self, path: str, ch: Change | None) -> str:
        m = self._base_mods[path]
        if ch is not None and ch.kind == "replaced":
            return "opaque"
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" \
                and not isinstance(m.padding, str):
            return "linear"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats \
                and m.running_mean is not None:
            return "bn"
        if isinstance(m, _CHANNELWISE):
            return "channelwise" if ch is None else "opaque"
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flatten"
        return "opaque"

    def _row_cost(self, m: nn.Module, rows: Tensor) -> float:
        """Fraction of a dense product spent on ``rows`` output channels (conv subsets are padded)."""
        n_out = m.weight.shape[0]
        if rows.numel() == 0:
            return 0.0
        if isinstance(m, nn.Conv2d):
            return min(n_out, -(-rows.numel() // self.row_multiple) * self.row_multiple) / n_out
        return rows.numel() / n_out

    def _rows_out(self, t: int, path: str, x: Tensor, rows: Tensor) -> Tensor:
        """Task ``t``'s module at ``path`` on input ``x``, output channels ``rows`` only (not bitwise exact)."""
        key = ("rows", path)
        cache = self._cache[t]
        if key not in cache:
            m = self._task_mods[t][path]
            n_out = m.weight.shape[0]
            sel = rows
            if isinstance(m, nn.Conv2d) and rows.numel() % self.row_multiple:
                want = min(n_out, -(-rows.numel() // self.row_multiple) * self.row_multiple)
                mask = torch.zeros(n_out, dtype=torch.bool)
                mask[rows] = True
                extra = (~mask).nonzero().flatten()[: want - rows.numel()]
                sel = torch.sort(torch.cat([rows, extra])).values
            pos = torch.searchsorted(sel, rows)
            dev = m.weight.device
            w = m.weight.detach()[sel.to(dev)].contiguous()
            b = None if m.bias is None else m.bias.detach()[sel.to(dev)].contiguous()
            cache[key] = (w, b, None if sel.numel() == rows.numel() else pos.to(dev))
        w, b, pos = cache[key]
        y = self._apply(self._task_mods[t][path], x, w, b)
        return y if pos is None else y[:, pos]

    def _in_weight(self, t: int, path: str, idx: Tensor) -> Tensor:
        key = ("in", path, idx.numel(), hash(idx.numpy().tobytes()) if idx.device.type == "cpu"
               else hash(idx.cpu().numpy().tobytes()))
        cache = self._cache[t]
        if key not in cache:
            w = self._task_mods[t][path].weight.detach()
            cache[key] = w[:, idx.to(w.device)].contiguous()
        return cache[key]

    @staticmethod
    def _apply(m: nn.Module, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, 1)
        return F.linear(x, w, b)

    def _leaf(self, t: int, path: str, act: _Act, run: _Run) -> _Act:
        m = self._task_mods[t][path]
        ch = self._changes[t].get(path)
        base = run.base
        if act.is_dense:
            return _Act.dense(m(act.vals), act.exact)
        kind = self._kind(path, ch)
        if act.is_shared and ch is None:
            return _Act.shared(base(path), act.exact)
        if kind == "opaque":
            return _Act.dense(m(act.full()), act.exact)
        if kind == "flatten":
            v = act.vals
            if v.dim() > 2:
                hw = v[0, 0].numel()
                idx = (act.idx.view(-1, 1) * hw + torch.arange(hw)).flatten()
                return _Act(base(path), idx, v.flatten(1), act.exact)
            return _Act(base(path), act.idx, v, act.exact)
        if kind == "channelwise":
            return _Act(base(path), act.idx, m(act.vals), act.exact)
        rows = ch.rows if ch is not None else _EMPTY
        if kind == "bn":
            u = _union(act.idx, rows)
            if u.numel() / m.num_features > run.be:
                return _Act.dense(m(act.full()), act.exact)
            x = act.at(u)
            ud = u.to(x.device)
            y = F.batch_norm(x, m.running_mean[ud], m.running_var[ud],
                             None if m.weight is None else m.weight[ud], None if m.bias is None else m.bias[ud],
                             False, 0.0, m.eps)
            return _diff(base(path), u, y, exact=False)
        # kind == "linear": Conv2d or Linear
        n_in = m.weight.shape[1]
        if act.is_shared:
            if self._row_cost(m, rows) <= run.be:
                return _diff(base(path), rows, self._rows_out(t, path, act.base, rows), exact=False)
            return _Act.dense(m(act.base), act.exact)
        if act.idx.numel() / n_in + self._row_cost(m, rows) > run.be:
            return _Act.dense(m(act.full()), act.exact)
        out = base(path)
        if rows.numel():
            out = out.clone()
            out[:, rows.to(out.device)] = self._rows_out(t, path, act.base, rows)
        d = act.vals - act.base[:, act.idx.to(act.base.device)]
        return _Act.dense(out + self._apply(m, d, self._in_weight(t, path, act.idx), None), exact=False)

    @staticmethod
    def _add(a: _Act, b: _Act, base_sum: Callable[[], Tensor]) -> _Act:
        exact = a.exact and b.exact
        if a.is_dense or b.is_dense:
            return _Act.dense(a.full() + b.full(), exact)
        if a.is_shared and b.is_shared:
            return _Act.shared(base_sum(), exact)
        u = _union(a.idx, b.idx)
        return _diff(base_sum(), u, a.at(u) + b.at(u), exact)

    def _residual(self, t: int, step: _Residual, act: _Act, run: _Run) -> _Act:
        if act.is_dense:
            return _Act.dense(self._task_mods[t][step.path](act.vals), act.exact)
        if act.is_shared and step.path not in self._changed_steps[t]:
            return _Act.shared(run.base(step.path), act.exact)
        a = act
        for p in step.main:
            a = self._leaf(t, p, a, run)
        s = act
        for p in step.shortcut:
            s = self._leaf(t, p, s, run)
        z = self._add(a, s, lambda: run.base(step.path + ":add"))
        return self._leaf(t, step.post, z, run)

    def _raw_task(self, t: int, run: _Run) -> tuple[Tensor, Tensor | None, bool]:
        """Task ``t``'s logits from base activations (no near-tie guard), the last module's input, and
        whether only bitwise-exact steps computed them (see :class:`_Act`)."""
        f = self._first[t]
        last = self._ir[-1]
        if f is None:
            return run.base(last.path), None, True
        act = _Act.shared(run.base(self._in_path(f)), exact=True)
        prev = act
        for step in self._ir[f:]:
            prev = act
            act = self._leaf(t, step.path, act, run) if isinstance(step, _Leaf) else \
                self._residual(t, step, act, run)
        return act.full(), prev.full(), act.exact

    def _dense_from(self, t: int, base: Callable[[str], Tensor]) -> Tensor:
        """Task ``t``'s dense network from its first changed module on, fed the shared base activation.

        Bit for bit ``tasks[t](x)``: the modules before the first change compute
        the same values in both networks, and from there the dense modules run.
        """
        f = self._first[t]
        h = base(self._in_path(f))
        for step in self._ir[f:]:
            h = self._task_mods[t][step.path](h)
        return h

    def _guard(self, t: int, logits: Tensor, last_input: Tensor | None, exact: bool,
               base: Callable[[str], Tensor]) -> Tensor:
        """The near-tie guard: dense logits for the whole batch if any top-two margin is within tolerance.

        Tolerance per sample: ``tie_tol * scale`` with ``scale = max_j (|W_j| . |h| + |b_j|)``
        for a final Linear with input ``h`` (the magnitude float32 rounding of the
        logits scales with), else ``max_j |logit_j|``; at least ``tie_tol``.
        Tasks computed only by bitwise-exact steps (shared modules and dense
        recomputation) skip the guard. The dense logits are computed from the
        shared prefix (:meth:`_dense_from`), bitwise equal to the full dense forward.
        """
        if logits.shape[1] < 2 or exact:
            return logits
        top = logits.topk(2, dim=1).values
        margin = top[:, 0] - top[:, 1]
        m = self._task_mods[t][self._ir[-1].path]
        if isinstance(m, nn.Linear) and last_input is not None:
            scale = last_input.abs() @ m.weight.detach().abs().T
            if m.bias is not None:
                scale = scale + m.bias.detach().abs()
            scale = scale.max(1).values
        else:
            scale = logits.abs().max(1).values
        if bool((margin <= self.tie_tol * scale.clamp(min=1.0)).any()):
            self.stats.fallbacks[t] += 1
            return self._dense_from(t, base)
        return logits

    # -- public --------------------------------------------------------------------------------

    def _select(self, tasks: Sequence[int] | None) -> list[int]:
        ts = list(range(self.num_tasks)) if tasks is None else list(tasks)
        bad = [t for t in ts if not 0 <= t < self.num_tasks]
        if bad:
            raise UserError(f"task index {bad[0]} out of range (the engine holds {self.num_tasks} tasks)")
        return ts

    def base_activations(self, x: Tensor, tasks: Sequence[int] | None = None,
                         mode: str = "live") -> dict[str, Tensor]:
        """The base activations that ``tasks`` (default: all) read for batch ``x`` (B, C, H, W).

        Includes ``"input"`` (``x`` itself) when a task's first change is the first module.
        """
        ts = self._select(tasks)
        be = self._effective_break_even(mode, len(ts))
        plan = self._plan(tuple(x.shape[1:]), x.device, x.dtype, be)
        want = set().union(*(plan.needs[t] for t in ts)) if ts else set()
        with torch.no_grad():
            return self._base_forward(x, want, plan.stop(ts))

    def forward_from(self, base: dict[str, Tensor], input_shape: Sequence[int], tasks: Sequence[int] | None = None,
                     mode: str = "live") -> list[Tensor]:
        """Logits of ``tasks`` (default: all) from base activations of one batch of ``(C, H, W)`` inputs.

        ``base``: what :meth:`base_activations` returned for the same ``tasks`` and
        ``mode`` (``"live"``: computed for this call; ``"trace"``: recorded
        earlier, so reading more of them costs nothing; see
        :meth:`_effective_break_even`).
        """
        ts = self._select(tasks)
        be = self._effective_break_even(mode, len(ts))
        device = next(iter(base.values())).device
        plan = self._plan(tuple(input_shape), device, next(iter(base.values())).dtype, be)

        def get(p: str) -> Tensor:
            try:
                return base[p]
            except KeyError:
                raise UserError(f"base activation '{p}' was not recorded; record the trace with an engine "
                                f"holding this task") from None

        out = []
        with torch.no_grad():
            self.stats.batches += 1
            run = _Run(be, get)
            for t in ts:
                logits, last_input, _ = self._raw_task(t, run)
                out.append(self._guard(t, logits, last_input, plan.exact[t], get))
        return out

    def forward(self, x: Tensor, tasks: Sequence[int] | None = None) -> list[Tensor]:
        """Logits ``(B, num_classes_t)`` of every task in ``tasks`` (default: all) on batch ``x``."""
        ts = self._select(tasks)
        return self.forward_from(self.base_activations(x, ts, "live"), x.shape[1:], ts, "live")

    def task_forward(self, t: int) -> Callable[[Tensor], Tensor]:
        """A ``forward(batch) -> logits`` for task ``t`` alone (for a certifier taking a forward)."""
        self._select([t])
        return lambda x: self.forward(x, [t])[0]
