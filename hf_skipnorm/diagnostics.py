"""Stability diagnostics for any skipnorm model: where the signal and the gradient go through depth.

Not part of the remote-code set (it is never copied by `save_pretrained`), so it may import matplotlib lazily.

What is measured, per block ``l`` (0-based; "depth 0" rows are the embedding output entering block 0):

| quantity | definition | why |
|---|---|---|
| ``stream_norm`` | mean over tokens of ``||h_l||_2``, ``h_l`` the stream after block ``l`` | hidden-state growth with depth ("The Curse of Depth", arXiv 2502.05795; Peri-LN, arXiv 2502.02732) |
| ``branch_ratio/<sublayer>`` | ``mean_t ||R(x, y) - R(x, 0)|| / mean_t ||x||`` at each residual module ``R`` | how much a sublayer changes the stream it reads; ~0 means the layer is (near) identity |
| ``token_cosine`` | mean pairwise cosine similarity of the token vectors of one sequence | rank collapse: -> 1 when all tokens look alike (Dong et al. 2021, arXiv 2103.03404) |
| ``grad_norm/<group>`` | ``||dL/dW||_2`` over all parameters of the group (``attn`` = ``self_attn.*``, ``mlp`` = ``mlp.*``, ``other`` = norms, residual scalars) | gradient scale by layer (Xiong et al. 2020, arXiv 2002.04745, Fig. 3) |
| ``update_ratio/<group>`` | ``||W_after - W_before|| / ||W_before||`` over one optimizer step | effective step size per layer |

Multi-stream blocks (whose output is ``(B, T, n, C)``) are read through the model's own
``residual_stream.reduce`` (what the head would see), and averaged over the stream axis if that does not reduce.
Where a sublayer's ``*_residual`` module is not called as ``R(x, y)`` (hyper-connections call its methods) or does
not exist, the branch ratio falls back to ``||F(.)|| / ||block input||`` from the ``self_attn`` / ``mlp`` outputs.

Entry points: `profile(model, batch)` (one forward + backward, nothing is stepped), `update_ratios`,
`DiagnosticsCallback` / `attach_diagnostics` for the Trainer, and
``python -m hf_skipnorm.diagnostics CHECKPOINT_OR_CONFIG`` for a table and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from transformers import TrainerCallback


# ----------------------------------------------------------------------------------------------- model anatomy
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The blocks of a skipnorm model, whether given the base model or a head (`model.model.layers`)."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"diagnostics expect a skipnorm model with `model.layers` or `model.model.layers`; "
            f"got {type(model).__name__} without them"
        )
    return layers


def _stream_reducer(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stream state -> (B, T, C): the model's own `residual_stream.reduce`, then a mean over any stream axis left."""
    stream = getattr(getattr(model, "base_model", model), "residual_stream", None)
    reduce = getattr(stream, "reduce", None) or (lambda s: s)

    def to_hidden(state: torch.Tensor) -> torch.Tensor:
        hidden = reduce(state)
        if hidden.dim() == 4:  # (B, T, n, C): n parallel streams the reduce left alone
            hidden = hidden.mean(dim=-2)
        return _at_least_float32(hidden)

    return to_hidden


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32 for the statistics; float64 stays float64 (the tests compare in float64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def parameter_group(name: str) -> str:
    """`self_attn.q_proj.weight` -> "attn", `mlp.up_proj.weight` -> "mlp", norms and residual scalars -> "other"."""
    top = name.split(".", 1)[0]
    # an encoder-decoder's decoder blocks also have `cross_attn` (issue 16)
    return {"self_attn": "attn", "mlp": "mlp", "cross_attn": "cross_attn"}.get(top, "other")


def grouped_parameters(model: nn.Module) -> list[dict[str, list[nn.Parameter]]]:
    """Per block, its trainable parameters grouped by `parameter_group`."""
    groups = []
    for block in decoder_layers(model):
        by_group: dict[str, list[nn.Parameter]] = {}
        for name, param in block.named_parameters():
            if param.requires_grad:
                by_group.setdefault(parameter_group(name), []).append(param)
        groups.append(by_group)
    return groups


# ----------------------------------------------------------------------------------------------- measurements
def token_norm(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean over (real) tokens of the L2 norm of each token vector; `hidden` is (B, T, C), `mask` (B, T)."""
    norms = hidden.norm(dim=-1)  # (B, T)
    if mask is None:
        return norms.mean().item()
    weights = mask.to(norms.dtype)
    return ((norms * weights).sum() / weights.sum().clamp(min=1)).item()


def mean_token_cosine(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean pairwise cosine similarity between distinct token vectors of each sequence, averaged over pairs.

    1 means every token of a sequence points the same way (rank collapse, Dong et al. 2021, arXiv 2103.03404).
    """
    batch, seq_len = hidden.shape[:2]
    unit = F.normalize(hidden, dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # (B, T, T)
    real = torch.ones(batch, seq_len, dtype=cosine.dtype, device=cosine.device) if mask is None else mask.to(cosine.dtype)
    pairs = real[:, :, None] * real[:, None, :] * (1 - torch.eye(seq_len, dtype=cosine.dtype, device=cosine.device))
    return ((cosine * pairs).sum() / pairs.sum().clamp(min=1)).item()


def gradient_norms(model: nn.Module) -> list[dict[str, float]]:
    """Per block, ``||grad||_2`` of each parameter group (call after `backward`); groups without grads are left out."""
    rows = []
    for by_group in grouped_parameters(model):
        row = {}
        for group, params in by_group.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                row[group] = math.sqrt(sum(_at_least_float32(g.detach()).pow(2).sum().item() for g in grads))
        rows.append(row)
    return rows


def snapshot_weights(model: nn.Module) -> list[dict[str, list[torch.Tensor]]]:
    """Copies of every block's grouped parameters, to compare after an optimizer step (`update_ratios`)."""
    return [{g: [p.detach().clone() for p in ps] for g, ps in by_group.items()} for by_group in grouped_parameters(model)]


def update_ratios(model: nn.Module, before: list[dict[str, list[torch.Tensor]]]) -> list[dict[str, float]]:
    """Per block and group, ``||W_after - W_before|| / ||W_before||`` since `snapshot_weights` was taken."""
    rows = []
    for by_group, old_group in zip(grouped_parameters(model), before):
        row = {}
        for group, params in by_group.items():
            old = old_group[group]
            delta = sum(_at_least_float32(p.detach() - o).pow(2).sum().item() for p, o in zip(params, old))
            size = sum(_at_least_float32(o).pow(2).sum().item() for o in old)
            row[group] = math.sqrt(delta) / math.sqrt(size) if size > 0 else float("nan")
        rows.append(row)
    return rows


class ForwardProbe:
    """Forward hooks recording, per block, the stream norm, the token similarity and each branch's relative size.

    Use as a context manager around one forward, or keep it installed and `arm()` it for the forwards to record
    (the Trainer callback does that). The first forward after `arm()` wins, so gradient-checkpointing recomputes
    and later micro-batches of an accumulation step do not overwrite it.
    """

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor | None = None):
        self.model = model
        self.mask = attention_mask
        self.to_hidden = _stream_reducer(model)
        self.layers = decoder_layers(model)
        self.handles: list = []
        self.armed = True
        self.records: dict = {}
        self.seconds = 0.0  # time spent inside the hooks: the probe's own overhead
        self._in_hook = False

    # --- lifecycle
    def install(self) -> "ForwardProbe":
        for index, block in enumerate(self.layers):
            if index == 0:
                self.handles.append(block.register_forward_pre_hook(self._embedding_hook, with_kwargs=True))
            self.handles.append(block.register_forward_pre_hook(self._block_input_hook(index), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._block_output_hook(index)))
            for name, module in block.named_children():
                if name.endswith("_residual"):
                    self.handles.append(module.register_forward_hook(self._residual_hook(index, name[: -len("_residual")])))
            # Fallback for residuals that are not called as R(x, y) (hyper-connections call methods; some blocks have
            # no residual module): the branch output over the block input. `rows` prefers the R(x, y) measurement.
            for branch, child in (("attn", "self_attn"), ("mlp", "mlp")):
                if isinstance(getattr(block, child, None), nn.Module):
                    self.handles.append(getattr(block, child).register_forward_hook(self._branch_hook(index, branch)))
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def arm(self, attention_mask: torch.Tensor | None = None) -> None:
        self.records, self.mask, self.armed = {}, attention_mask, True

    def disarm(self) -> None:
        self.armed = False

    def __enter__(self) -> "ForwardProbe":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # --- hooks
    def _record(self, key: tuple, compute: Callable[[], float]) -> None:
        if not self.armed or self._in_hook or key in self.records:
            return
        start = time.perf_counter()
        self._in_hook = True
        try:
            with torch.no_grad():
                self.records[key] = compute()
        finally:
            self._in_hook = False
            self.seconds += time.perf_counter() - start

    def _mask_for(self, hidden: torch.Tensor) -> torch.Tensor | None:
        mask = self.mask
        if mask is None or mask.dim() != 2 or mask.shape != hidden.shape[:2]:
            return None
        return mask.to(hidden.device)

    def _embedding_hook(self, module, args, kwargs):
        state = args[0] if args else kwargs["hidden_states"]

        def compute():
            hidden = self.to_hidden(state.detach())
            mask = self._mask_for(hidden)
            return token_norm(hidden, mask), mean_token_cosine(hidden, mask)

        self._record(("embedding",), compute)

    def _block_input_hook(self, index: int):
        def hook(module, args, kwargs):
            state = args[0] if args else kwargs["hidden_states"]
            self._record((index, "input_norm"), lambda: token_norm(self.to_hidden(state.detach())))

        return hook

    def _block_output_hook(self, index: int):
        def hook(module, args, output):
            state = _first_tensor(output)

            def compute():
                hidden = self.to_hidden(state.detach())
                mask = self._mask_for(hidden)
                return token_norm(hidden, mask), mean_token_cosine(hidden, mask)

            self._record((index, "output"), compute)

        return hook

    def _residual_hook(self, index: int, branch: str):
        def hook(module, args, output):
            if len(args) < 2:
                return
            x, y = args[0].detach(), args[1].detach()

            def compute():
                # What the branch adds, R(x, y) - R(x, 0): right for x + y, a*x + m*y, x + alpha*y, N-free or not.
                without_branch = module(x, torch.zeros_like(y))
                contribution = _first_tensor(output).detach() - without_branch
                mask = self._mask_for(x) if x.dim() == 3 else None
                return (token_norm(_at_least_float32(contribution), mask)
                        / max(token_norm(_at_least_float32(x), mask), 1e-30))

            self._record((index, "branch", branch), compute)

        return hook

    def _branch_hook(self, index: int, branch: str):
        def hook(module, args, output):
            out = _first_tensor(output).detach()

            def compute():
                reference = self.records.get((index, "input_norm"), float("nan"))
                return token_norm(self.to_hidden(out) if out.dim() == 4 else _at_least_float32(out)) / max(reference, 1e-30)

            self._record((index, "branch_output", branch), compute)

        return hook

    # --- results
    def rows(self) -> tuple[dict, list[dict]]:
        """(embedding row, one row per block) from the last recorded forward."""
        embedding = {}
        if ("embedding",) in self.records:
            norm, cosine = self.records[("embedding",)]
            embedding = {"stream_norm": norm, "token_cosine": cosine}
        rows = []
        for index in range(len(self.layers)):
            row: dict = {"layer": index}
            if (index, "output") in self.records:
                row["stream_norm"], row["token_cosine"] = self.records[(index, "output")]
            for kind in ("branch_output", "branch"):  # the R(x, y) measurement, where there is one, wins
                for key, value in self.records.items():
                    if len(key) == 3 and key[0] == index and key[1] == kind:
                        row[f"branch_ratio/{key[2]}"] = value
            rows.append(row)
        return embedding, rows


def _loss_of(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's own loss; for causal/masked LMs without labels, next-token / reconstruction on input_ids; for a
    headless model the mean square of the last hidden state (a proxy that still sends a gradient to every block)."""
    inputs = dict(batch)
    if "labels" not in inputs and "input_ids" in inputs and type(model).__name__.endswith(("ForCausalLM", "ForMaskedLM")):
        inputs["labels"] = inputs["input_ids"]
    output = model(**inputs)
    loss = getattr(output, "loss", None)
    if loss is None:
        hidden = output if isinstance(output, (torch.Tensor, tuple, list)) else output.to_tuple()
        loss = _at_least_float32(_first_tensor(hidden)).pow(2).mean()
    return loss


def profile(model: nn.Module, batch: dict) -> dict:
    """One forward + backward on `batch` with every diagnostic recorded; nothing is stepped and grads are cleared.

    Returns ``{"loss", "embedding": {...}, "layers": [{"layer", "stream_norm", "token_cosine",
    "branch_ratio/attn", "branch_ratio/mlp", "grad_norm/attn", "grad_norm/mlp", "grad_norm/other"}, ...]}``.
    """
    model.zero_grad(set_to_none=True)
    with ForwardProbe(model, batch.get("attention_mask")) as probe:
        loss = _loss_of(model, batch)
    loss.backward()
    embedding, rows = probe.rows()
    for row, grads in zip(rows, gradient_norms(model)):
        row.update({f"grad_norm/{group}": value for group, value in grads.items()})
    model.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "embedding": embedding, "layers": rows}


def profile_encoder_decoder(model: nn.Module, batch: dict) -> dict:
    """`profile` per stack of an encoder-decoder (`SkipNormForConditionalGeneration`): one forward + backward on
    `batch` (with `labels`, or `input_ids` reconstructed), the encoder's and the decoder's rows recorded separately;
    decoder rows also carry ``branch_ratio/cross_attn`` and ``grad_norm/cross_attn``.

    Returns ``{"loss", "encoder": {"embedding", "layers"}, "decoder": {"embedding", "layers"}}``.
    """
    base = getattr(model, "model", model)
    inputs = dict(batch)
    if "labels" not in inputs and "decoder_input_ids" not in inputs:
        inputs["labels"] = inputs["input_ids"]  # BART-style reconstruction: a real loss through both stacks
    model.zero_grad(set_to_none=True)
    with ForwardProbe(base.encoder, batch.get("attention_mask")) as encoder_probe, \
            ForwardProbe(base.decoder, batch.get("decoder_attention_mask")) as decoder_probe:
        loss = _loss_of(model, inputs)
    loss.backward()
    result: dict = {"loss": loss.item()}
    for name, stack, probe in (("encoder", base.encoder, encoder_probe), ("decoder", base.decoder, decoder_probe)):
        embedding, rows = probe.rows()
        for row, grads in zip(rows, gradient_norms(stack)):
            row.update({f"grad_norm/{group}": value for group, value in grads.items()})
        result[name] = {"embedding": embedding, "layers": rows}
    model.zero_grad(set_to_none=True)
    return result


def flatten(rows: list[dict], prefix: str = "diag") -> dict[str, float]:
    """Per-layer rows -> flat scalar names for loggers, e.g. ``diag/grad_norm/mlp/layer_03``."""
    flat = {}
    width = max(2, len(str(len(rows) - 1)))
    for row in rows:
        for key, value in row.items():
            if key != "layer":
                flat[f"{prefix}/{key}/layer_{row['layer']:0{width}d}"] = value
    return flat


# ----------------------------------------------------------------------------------------------- Trainer callback
class DiagnosticsCallback(TrainerCallback):
    """Logs the diagnostics every `every_n_steps` optimizer steps (and at the first step).

    On a logged step: the forward hooks record stream norms, branch ratios and token similarity of the step's first
    micro-batch; at `on_pre_optimizer_step` the per-layer gradient norms are read (after the Trainer's clipping: set
    `max_grad_norm=0` to see raw ones) and the weights copied; at `on_optimizer_step` the update-to-weight ratios are
    computed. The record goes to `jsonl_path` (one JSON object per line), to `state.log_history`, and, when bound to
    a trainer (`attach_diagnostics`), through `trainer.log` to every logger in `report_to` (TensorBoard, ...).
    Between logged steps the hooks return at once; ``diag/overhead_fraction`` reports the measured cost (about 2% at
    `every_n_steps=10` on a 6-block d=64 model, training/study_output/report.md). The callback does not see the
    batch, so padding tokens count in its token statistics; `profile(model, batch)` honours `attention_mask`.
    """

    def __init__(self, every_n_steps: int = 50, jsonl_path: str | None = None, trainer=None):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"DiagnosticsCallback.every_n_steps={every_n_steps!r} is not valid; expected an integer >= 1")
        self.every_n_steps = every_n_steps
        self.jsonl_path = jsonl_path
        self.trainer = trainer
        self.probe: ForwardProbe | None = None
        self.seconds = 0.0  # time spent in this callback outside the hooks
        self._train_start = None
        self._active = False
        self._snapshot = None
        self._record: dict = {}

    def _logged_step(self, step: int) -> bool:
        return step == 1 or step % self.every_n_steps == 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.probe = ForwardProbe(model).install()
        self.probe.disarm()
        self._train_start = time.perf_counter()
        if self.jsonl_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.jsonl_path)), exist_ok=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self._active = self._logged_step(state.global_step + 1)
        if self._active:
            self.probe.arm()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self._active:
            return
        start = time.perf_counter()
        self.probe.disarm()
        self._grads = gradient_norms(model)
        self._snapshot = snapshot_weights(model)
        self.seconds += time.perf_counter() - start

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self._active or self._snapshot is None:
            return
        start = time.perf_counter()
        self._updates = update_ratios(model, self._snapshot)
        self._snapshot = None
        self.seconds += time.perf_counter() - start

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self._active:
            return
        start = time.perf_counter()
        self.probe.disarm()
        embedding, rows = self.probe.rows()
        for row, grads, updates in zip(rows, self._grads, self._updates):
            row.update({f"grad_norm/{g}": v for g, v in grads.items()})
            row.update({f"update_ratio/{g}": v for g, v in updates.items()})
        overhead = self.seconds + self.probe.seconds
        elapsed = time.perf_counter() - self._train_start
        self._active = False
        scalars = flatten(rows)
        scalars.update({f"diag/embedding/{k}": v for k, v in embedding.items()})
        scalars["diag/overhead_fraction"] = (overhead + time.perf_counter() - start) / max(elapsed, 1e-9)
        if self.jsonl_path:
            with open(self.jsonl_path, "a") as handle:
                record = {"step": state.global_step, "embedding": embedding, "layers": rows,
                          "overhead_seconds": overhead, "elapsed_seconds": elapsed}
                handle.write(json.dumps(record) + "\n")
        self.seconds += time.perf_counter() - start
        if self.trainer is not None:
            self.trainer.log(scalars)  # reaches every `report_to` logger and state.log_history
        else:
            state.log_history.append({**scalars, "step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if self.probe is not None:
            self.probe.remove()

    @property
    def overhead_seconds(self) -> float:
        return self.seconds + (self.probe.seconds if self.probe is not None else 0.0)


def attach_diagnostics(trainer, every_n_steps: int = 50, jsonl_path: str | None = None) -> DiagnosticsCallback:
    """Add a `DiagnosticsCallback` bound to `trainer`, so its scalars reach the Trainer's loggers."""
    callback = DiagnosticsCallback(every_n_steps=every_n_steps, jsonl_path=jsonl_path, trainer=trainer)
    trainer.add_callback(callback)
    return callback


# ----------------------------------------------------------------------------------------------- table and plots
TABLE_COLUMNS = (
    ("stream_norm", "|h|"),
    ("token_cosine", "cos(tok)"),
    ("branch_ratio/attn", "attn/|x|"),
    ("branch_ratio/mlp", "mlp/|x|"),
    ("grad_norm/attn", "grad attn"),
    ("grad_norm/mlp", "grad mlp"),
    ("grad_norm/other", "grad other"),
)


def format_table(result: dict) -> str:
    """A fixed-width table of a `profile` result: one row per block, the embedding first."""
    header = f"{'layer':>6} " + " ".join(f"{title:>10}" for _, title in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    rows = [{"layer": "emb", **result.get("embedding", {})}] + result["layers"]
    for row in rows:
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = row.get(key)
            cells.append(f"{value:>10.4g}" if isinstance(value, (int, float)) else f"{'':>10}")
        lines.append(f"{str(row['layer']):>6} " + " ".join(cells))
    lines.append(f"loss {result['loss']:.4f}")
    return "\n".join(lines)


# The panels of `plot_profiles`: (key in a profile row, panel title, y-axis label, log scale).
PLOT_PANELS = (
    ("stream_norm", "residual-stream norm", "mean token norm |h|", True),
    ("token_cosine", "token similarity (rank collapse at 1)", "mean pairwise cosine", False),
    ("branch_ratio", "branch output relative to the stream", "|branch| / |x|", True),
    ("grad_norm/mlp", "gradient norm of the MLP weights", "||dL/dW_mlp||", True),
)


def plot_profiles(profiles: dict[str, dict], path: str, title: str = "") -> str:
    """One PNG with four panels (stream norm, token cosine, branch ratio, MLP gradient norm) by block, one colour
    per labelled `profile` result. Blocks are numbered from 0 as in `format_table`; "emb" is the embedding output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    num_blocks = max((len(result["layers"]) for result in profiles.values()), default=0)
    for axis, (key, panel_title, y_label, log_scale) in zip(axes.flat, PLOT_PANELS):
        for index, (name, result) in enumerate(profiles.items()):
            color = f"C{index % 10}"
            layers = result["layers"]
            if key == "branch_ratio":
                for branch, style in (("attn", "-"), ("mlp", "--")):
                    xs = [r["layer"] for r in layers if f"branch_ratio/{branch}" in r]
                    ys = [r[f"branch_ratio/{branch}"] for r in layers if f"branch_ratio/{branch}" in r]
                    if xs:
                        axis.plot(xs, ys, style, marker="o", markersize=3, color=color, label=f"{name}: {branch}")
                continue
            xs = [r["layer"] for r in layers if key in r]
            ys = [r[key] for r in layers if key in r]
            if key in result.get("embedding", {}):  # the embedding output, left of block 0 as in the table
                xs, ys = [-1] + xs, [result["embedding"][key]] + ys
            axis.plot(xs, ys, "-o", markersize=3, color=color, label=name)
        axis.set_title(panel_title, fontsize=12)
        axis.set_xlabel("block (emb = embedding output)", fontsize=11)
        axis.set_ylabel(y_label, fontsize=11)
        step = max(1, math.ceil(num_blocks / 12))  # at most ~12 block ticks, always integers, always "emb"
        axis.xaxis.set_major_locator(FixedLocator([-1] + list(range(0, num_blocks, step))))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: "emb" if value == -1 else f"{value:.0f}"))
        axis.set_xlim(-1.4, max(num_blocks - 1, 0) + 0.4)
        axis.tick_params(labelsize=10)
        values = [v for line in axis.get_lines() for v in line.get_ydata() if math.isfinite(v)]
        if log_scale and values and min(values) > 0 and max(values) / min(values) >= 10:
            # Log scale where the values span a decade or more; plain numbers on the decade ticks.
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
            axis.yaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3)
        if key == "branch_ratio" or (axis is axes.flat[0] and len(profiles) > 1):
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- command line
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_for_profile(source: str, overrides: Iterable[str] = ()) -> tuple[nn.Module, object, str]:
    """(model, tokenizer or None, "trained" | "init") from a checkpoint folder, a folder with only config.json,
    or a config JSON file; `overrides` are ``field=value`` strings applied to the config (JSON values)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .configuration_skipnorm import SkipNormConfig

    updates = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not valid; expected field=value, e.g. norm_position=post")
        key, value = item.split("=", 1)
        updates[key] = _parse_value(value)
    if os.path.isfile(source):
        with open(source) as handle:
            config = SkipNormConfig(**{**json.load(handle), **updates})
        return AutoModelForCausalLM.from_config(config), None, "init"
    if not os.path.isdir(source):
        raise ValueError(f"{source!r} is neither a checkpoint folder nor a config JSON file")
    has_weights = any(name.endswith((".safetensors", ".bin")) for name in os.listdir(source))
    tokenizer = None
    if any(name.startswith("tokenizer") for name in os.listdir(source)):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if has_weights and not updates:
        return AutoModelForCausalLM.from_pretrained(source), tokenizer, "trained"
    config = AutoConfig.from_pretrained(source, **updates)
    return AutoModelForCausalLM.from_config(config), tokenizer, "init"


def sample_batch(vocab_size: int, tokenizer=None, batch_size: int = 8, seq_len: int = 128, seed: int = 0) -> dict:
    """Real text when possible (the Python Language Reference shipped with CPython), else random token ids."""
    generator = torch.Generator().manual_seed(seed)
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    if tokenizer is not None:
        ids = tokenizer(text[: 200_000])["input_ids"]
    elif vocab_size >= 256:  # byte-level ids
        ids = list(text.encode("utf-8"))
    else:
        ids = torch.randint(0, vocab_size, (batch_size * seq_len * 4,), generator=generator).tolist()
    ids = torch.tensor(ids, dtype=torch.long) % vocab_size
    starts = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=generator)
    return {"input_ids": torch.stack([ids[s : s + seq_len] for s in starts.tolist()])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m hf_skipnorm.diagnostics",
        description="Print the init-time (config) or trained (checkpoint) stability profile and write PNG plots.",
    )
    parser.add_argument("source", help="checkpoint folder, folder with config.json, or a config JSON file")
    parser.add_argument("--out", default="diagnostics_output", help="folder for profile.png and profile.json")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (JSON value), e.g. --set norm_position='\"post\"'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, tokenizer, kind = load_for_profile(args.source, args.set)
    seq_len = min(args.seq_len, model.config.max_position_embeddings)
    batch = sample_batch(model.config.vocab_size, tokenizer, args.batch_size, seq_len, args.seed)
    result = profile(model, batch)
    c = model.config
    title = (f"{kind} profile: norm_position={c.norm_position} norm_type={c.norm_type} residual={c.residual} "
             f"L={c.num_hidden_layers} d={c.hidden_size}")
    print(title)
    print(format_table(result))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile.json"), "w") as handle:
        json.dump({"kind": kind, "source": args.source, **result}, handle, indent=1)
    png = plot_profiles({os.path.basename(os.path.normpath(args.source)) or "model": result},
                        os.path.join(args.out, "profile.png"), title)
    print(f"wrote {png} and {os.path.join(args.out, 'profile.json')}")
    return result


if __name__ == "__main__":
    main()
