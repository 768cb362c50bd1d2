"""`kecil prune`: a smaller, faster Hugging Face model by removing whole attention heads, MLP
neurons, hidden channels or layers, chosen by how much they do on calibration text.

Width (Minitron, https://arxiv.org/abs/2407.14679): a query head's importance is the norm of its
attention output, an MLP neuron's the magnitude of its activation (the input of down_proj), a
hidden (embedding) channel's the magnitude of every RMSNorm's output in it, each summed over the
calibration tokens. Depth (ShortGPT, https://arxiv.org/abs/2403.03853): a layer's block influence
is 1 - cos(its input, its output), averaged over the tokens; the least influential go. Widths are
the same in every layer and grouped-query attention keeps its groups whole (the same number of
query heads is kept in each KV group), so the result is an ordinary config that transformers
loads with AutoModelForCausalLM and that `kecil quantize` turns into a GGUF for llama.cpp.
`heal=True` then distills the pruned model from the original (kecil/compress/distill.py).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kecil.compress.pruned_weights import Shape, build, drop_layers, head_dim_of, model_shape, narrow, reshaped
from kecil.errors import ConfigError, InvalidModelError

# width: attention heads and MLP neurons; depth: whole layers; minitron: width plus hidden channels.
METHODS = ("width", "depth", "minitron")
IMPORTANCE = ("activation", "random")  # random: the baseline importance has to beat
CALIBRATION_CONTEXT = 512
# Pruned widths stay multiples of this: ggml quantizes rows in blocks of 32 values, so a row of
# another length would keep the whole tensor in a 16-bit fallback type.
ALIGN = 32

# (stage, done, total): "load", "calibrate", "prune", "save", then distill's stages when healing.
Progress = Callable[[str, int, int], None]


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class PruneConfig:
    """What to prune, how much, and how to choose what goes."""

    model: str = field(metadata=_help("Built-in name, .gguf file (dequantized) or Hugging Face folder."))
    output: Path = field(metadata=_help("Folder to write the pruned Hugging Face model into.", flag=("--output", "-o")))
    ratio: float | None = field(default=None, metadata=_help("Share of the parameters to remove, between 0 and 1 (e.g. 0.25)."))
    params: int | None = field(default=None, metadata=_help("Parameters to keep at most (instead of --ratio)."))
    method: str = field(default="minitron", metadata=_help(
        "width (attention heads and MLP neurons), depth (whole layers, ShortGPT) or minitron (width plus hidden channels)."))
    calib: Path | None = field(default=None, metadata=_help("Calibration text or JSONL (default: kecil's bundled set: English Wikipedia first, then other languages and code)."))
    calib_chunks: int = field(default=8, metadata=_help("Most 512-token calibration chunks read."))
    importance: str = field(default="activation", metadata=_help(
        "activation (measured on the calibration text) or random (a baseline).", hidden=True))
    seed: int = field(default=0, metadata=_help("Seed for random importance and for healing.", hidden=True))
    heal: bool = field(default=False, metadata=_help("Distill the pruned model from the original afterwards (kecil distill)."))
    heal_minutes: float | None = field(default=None, metadata=_help("Healing time budget in minutes (default: one pass over the data)."))
    heal_tokens: int | None = field(default=None, metadata=_help("Healing budget in training tokens (instead of minutes)."))
    threads: int | None = field(default=None, metadata=_help("CPU threads (default: physical cores).", flag=("--threads", "-t")))

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.method not in METHODS:
            raise ConfigError(f"unknown pruning method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"unknown importance {self.importance!r}; choose one of: {', '.join(IMPORTANCE)}")
        if (self.ratio is None) == (self.params is None):
            raise ConfigError("give exactly one of --ratio (share of parameters to remove) or --params (parameters to keep)")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(f"--ratio {self.ratio} is the share of parameters to remove: pass a number between 0 and 1, e.g. 0.25")
        if self.params is not None and self.params < 1:
            raise ConfigError(f"--params {self.params} must be a positive number of parameters to keep")
        if self.calib_chunks < 1:
            raise ConfigError(f"calib_chunks must be at least 1, got {self.calib_chunks}")
        if not self.heal and (self.heal_minutes is not None or self.heal_tokens is not None):
            raise ConfigError("--heal-minutes and --heal-tokens set healing's budget: add --heal, or drop them")



@dataclass
class PruneResult:
    output: Path
    method: str
    params_before: int
    params_after: int
    before: Shape
    after: Shape
    removed: list[str]  # plain sentences, one per kind of thing removed
    removed_layers: list[int] = field(default_factory=list)
    calibration_tokens: int = 0
    seconds: float = 0.0
    heal: dict | None = None  # distill's result, when healed

    def to_dict(self) -> dict:
        data = asdict(self)
        data["output"] = str(self.output)
        return data


def prune(config: PruneConfig, progress: Progress | None = None) -> PruneResult:
    """Prune `config.model` and write it to `config.output` (see PruneConfig)."""
    import torch

    from kecil.compress.calibration import read_calibration_text
    from kecil.infer.hardware import physical_cores
    from kecil.infer.torch_backend import load_transformers
    from kecil.models.reference import resolve

    started = time.perf_counter()
    report = progress or (lambda stage, done, total: None)
    output = config.output.expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} already exists and is not empty: choose another -o folder or remove it")
    ref = resolve(config.model)
    text = read_calibration_text(config.calib) if config.importance == "activation" else ""
    torch.set_num_threads(config.threads or physical_cores())
    report("load", 0, 1)
    try:
        model, tokenizer = load_transformers(ref)
    except Exception as error:  # a corrupt file fails inside transformers or gguf in many ways
        if isinstance(error, InvalidModelError):
            raise
        raise InvalidModelError(f"cannot load {ref.name} to prune it ({str(error).splitlines()[0][:200]}): check it with `kecil info {ref.spec}`") from None
    model.eval()
    report("load", 1, 1)
    before = model_shape(model.config)
    params_before = count_parameters(model)
    target = config.params if config.params is not None else int(params_before * (1 - config.ratio))
    if target >= params_before:
        raise ConfigError(f"{ref.name} has {params_before:,} parameters, already no more than --params {target:,}: nothing to prune")
    if config.method == "depth":
        scores, tokens = _importance(model, tokenizer, text, config, want="depth", progress=report)
        layers = _plan_depth(model.config, target)
        removed_layers = sorted(int(i) for i in torch.argsort(scores["influence"])[: before.layers - layers])
        new_config, state = drop_layers(model, removed_layers)
    else:
        new_shape = _plan_width(model.config, target, prune_hidden=config.method == "minitron")
        scores, tokens = _importance(model, tokenizer, text, config, want="width", progress=report)
        removed_layers = []
        new_config, state = narrow(model, new_shape, scores)
    report("prune", 0, 1)
    pruned = build(new_config, state)
    pruned.generation_config = model.generation_config
    report("prune", 1, 1)
    after = model_shape(pruned.config)
    params_after = count_parameters(pruned)
    del model, state
    _save(pruned, tokenizer, output, report)
    result = PruneResult(output, config.method, params_before, params_after, before, after,
                         describe_removal(before, after, removed_layers), removed_layers, tokens)  # fmt: skip
    result.seconds = time.perf_counter() - started
    if config.heal:
        result.heal = _heal(config, ref, output, progress)
    return result


def count_parameters(model) -> int:
    """Parameters as stored once: a tied embedding and output head count once."""
    return sum(p.numel() for p in model.parameters())


def describe_removal(before: Shape, after: Shape, removed_layers: list[int]) -> list[str]:
    lines = []
    if removed_layers:
        lines.append(f"removed {len(removed_layers)} of {before.layers} layers: {', '.join(map(str, removed_layers))}")
    if after.heads != before.heads:
        group = (f" ({after.heads // after.kv_heads} of {before.heads // before.kv_heads} per KV group)"
                 if after.kv_heads == before.kv_heads and before.heads != before.kv_heads else "")
        lines.append(f"attention heads per layer: {before.heads} -> {after.heads}{group}, KV heads {before.kv_heads} -> {after.kv_heads}")
    if after.intermediate != before.intermediate:
        lines.append(f"MLP neurons per layer: {before.intermediate} -> {after.intermediate}")
    if after.hidden != before.hidden:
        lines.append(f"hidden (embedding) channels: {before.hidden} -> {after.hidden}")
    return lines


# ---------------------------------------------------------------- importance


def _importance(model, tokenizer, text: str, config: PruneConfig, *, want: str, progress: Progress) -> tuple[dict, int]:
    """Scores per layer: "heads" (layers, heads), "neurons" (layers, intermediate), "channels"
    (hidden,) and "influence" (layers,); and the calibration tokens read. Random ones for
    importance="random"."""
    import torch

    shape = model_shape(model.config)
    if config.importance == "random":
        g = torch.Generator().manual_seed(config.seed)
        return {"heads": torch.rand(shape.layers, shape.heads, generator=g), "neurons": torch.rand(shape.layers, shape.intermediate, generator=g),
                "channels": torch.rand(shape.hidden, generator=g), "influence": torch.rand(shape.layers, generator=g)}, 0  # fmt: skip
    chunks = _chunks(tokenizer, text, config.calib_chunks)
    layers = model.get_decoder().layers
    scores = {"heads": torch.zeros(shape.layers, shape.heads), "neurons": torch.zeros(shape.layers, shape.intermediate),
              "channels": torch.zeros(shape.hidden), "influence": torch.zeros(shape.layers)}  # fmt: skip
    head_dim = head_dim_of(model.config)
    hooks = []

    def heads_hook(i):
        def hook(module, inputs):  # the input of o_proj: every head's attention output, side by side
            x = inputs[0].detach().float()
            scores["heads"][i] += x.reshape(*x.shape[:-1], -1, head_dim).norm(dim=-1).reshape(-1, x.shape[-1] // head_dim).sum(0)
        return hook

    def neurons_hook(i):
        def hook(module, inputs):  # the input of down_proj: each neuron's activation
            scores["neurons"][i] += inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).sum(0)
        return hook

    def channels_hook(module, inputs, output):  # every RMSNorm output in the residual width
        scores["channels"] += output.detach().float().abs().reshape(-1, output.shape[-1]).sum(0)

    def influence_hook(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            scores["influence"][i] += (1 - torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)).sum()
        return hook

    for i, layer in enumerate(layers):
        if want == "depth":
            hooks.append(layer.register_forward_hook(influence_hook(i), with_kwargs=True))
            continue
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(heads_hook(i)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(neurons_hook(i)))
    if want == "width":
        for module in model.get_decoder().modules():
            weight = getattr(module, "weight", None)
            if type(module).__name__.endswith("RMSNorm") and weight is not None and weight.shape == (shape.hidden,):
                hooks.append(module.register_forward_hook(channels_hook))
    try:
        with torch.inference_mode():
            for done, chunk in enumerate(chunks, start=1):
                model.get_decoder()(input_ids=torch.tensor([chunk]), use_cache=False)
                progress("calibrate", done, len(chunks))
    finally:
        for h in hooks:
            h.remove()
    return scores, sum(len(c) for c in chunks)


def _chunks(tokenizer, text: str, most: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = CALIBRATION_CONTEXT - 1
    chunks = [ids[i : i + step] for i in range(0, len(ids) - step + 1, step)][:most]
    if not chunks:
        raise ConfigError(f"the calibration text is {len(ids)} tokens, less than one {CALIBRATION_CONTEXT}-token chunk: pass a longer --calib file")
    bos = tokenizer.bos_token_id
    return [[bos, *c] for c in chunks] if bos is not None else chunks


# ---------------------------------------------------------------- sizes


def _plan_width(config, target: int, *, prune_hidden: bool) -> Shape:
    """The widest uniform shape with at most `target` parameters: one keep-fraction f for heads,
    MLP neurons (and hidden channels), searched by bisection on the exact count of each shape."""
    shape = model_shape(config)
    group = shape.heads // shape.kv_heads

    def at(f: float) -> Shape:
        if group > 1:  # keep every KV group, the same number of query heads in each
            kv, heads = shape.kv_heads, shape.kv_heads * max(1, round(f * group))
        else:  # one query head per KV head: whole heads go
            kv = heads = max(1, round(f * shape.kv_heads))
        return Shape(shape.layers, heads, kv, _aligned(shape.intermediate, f), _aligned(shape.hidden, f) if prune_hidden else shape.hidden)

    low, high = 0.0, 1.0
    for _ in range(24):
        middle = (low + high) / 2
        if _parameters(config, at(middle)) <= target:
            low = middle
        else:
            high = middle
    best = at(low)
    # Heads come in whole groups, so the shape found can fall well short of the target: give what is
    # left to the MLP, the finest-grained width.
    while best.intermediate + ALIGN <= shape.intermediate and _parameters(config, grown := replace(best, intermediate=best.intermediate + ALIGN)) <= target:
        best = grown
    if _parameters(config, best) > target:
        smallest = _parameters(config, at(0.0))
        raise ConfigError(f"the narrowest uniform model this method makes has {smallest:,} parameters, more than the {target:,} asked: "
                          "ask for fewer removed, or try --method depth or minitron")  # fmt: skip
    return best


def _aligned(width: int, f: float) -> int:
    if width % ALIGN:
        return max(1, round(width * f))
    return max(ALIGN, int(round(width * f / ALIGN)) * ALIGN)


def _plan_depth(config, target: int) -> int:
    """How many layers to keep so the model has at most `target` parameters."""
    full = model_shape(config)
    for layers in range(full.layers - 1, 0, -1):
        if _parameters(config, Shape(layers, full.heads, full.kv_heads, full.intermediate, full.hidden)) <= target:
            return layers
    raise ConfigError(f"even one layer leaves more than the {target:,} parameters asked (embeddings included): ask for fewer removed")


def _parameters(config, shape: Shape) -> int:
    """The parameter count of `config` at `shape`, from a model built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    key = (config.to_json_string(), shape)
    if key not in _COUNTS:  # the search asks for the same few shapes many times
        with torch.device("meta"):
            _COUNTS[key] = count_parameters(AutoModelForCausalLM.from_config(reshaped(config, shape)))
    return _COUNTS[key]


_COUNTS: dict[tuple[str, Shape], int] = {}


def _save(model, tokenizer, output: Path, report: Progress) -> None:
    """Written into a temporary folder beside `output` and renamed into place: a killed run leaves no half model."""
    report("save", 0, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.parent / f".tmp-{output.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(str(temporary), safe_serialization=True)
    tokenizer.save_pretrained(str(temporary))
    if output.exists():
        output.rmdir()  # empty, checked before pruning
    os.replace(temporary, output)
    report("save", 1, 1)


def _heal(config: PruneConfig, ref, output: Path, progress: Progress | None) -> dict:
    """Distill the pruned model in `output` from the original (the teacher is the model itself)."""
    from kecil.compress.distill import DistillConfig, distill

    pruned = output.parent / f".tmp-pruned-{output.name}-{os.getpid()}"
    os.replace(output, pruned)
    try:
        result = distill(DistillConfig(student=str(pruned), teacher=ref.spec, output=output, minutes=config.heal_minutes,
                                       tokens=config.heal_tokens, seed=config.seed, threads=config.threads), progress=progress)  # fmt: skip
    except BaseException:
        if not (output / "config.json").exists():  # healing did not finish: the pruned, unhealed model stays where it was asked for
            shutil.rmtree(output, ignore_errors=True)
            os.replace(pruned, output)
        raise
    shutil.rmtree(pruned, ignore_errors=True)
    return result.to_dict()
