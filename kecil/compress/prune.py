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

import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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
    calib: Path | None = field(default=None, metadata=_help("Calibration text or JSONL (default: kecil's multilingual set)."))
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


@dataclass(frozen=True)
class Shape:
    """The widths that change: the same in every layer."""

    layers: int
    heads: int  # query heads
    kv_heads: int
    intermediate: int
    hidden: int


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
        new_config, state = _drop_layers(model, removed_layers)
    else:
        new_shape = _plan_width(model.config, target, prune_hidden=config.method == "minitron")
        scores, tokens = _importance(model, tokenizer, text, config, want="width", progress=report)
        removed_layers = []
        new_config, state = _narrow(model, new_shape, scores)
    report("prune", 0, 1)
    pruned = _build(new_config, state)
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


def model_shape(config) -> Shape:
    heads = config.num_attention_heads
    return Shape(config.num_hidden_layers, heads, getattr(config, "num_key_value_heads", None) or heads,
                 config.intermediate_size, config.hidden_size)  # fmt: skip


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
    head_dim = _head_dim(model.config)
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


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
            _COUNTS[key] = count_parameters(AutoModelForCausalLM.from_config(_reshaped(config, shape)))
    return _COUNTS[key]


_COUNTS: dict[tuple[str, Shape], int] = {}


def _reshaped(config, shape: Shape):
    import copy

    new = copy.deepcopy(config)
    new.head_dim = _head_dim(config)  # explicit: heads x head_dim no longer equals the hidden size
    new.num_hidden_layers, new.num_attention_heads, new.num_key_value_heads = shape.layers, shape.heads, shape.kv_heads
    new.intermediate_size, new.hidden_size = shape.intermediate, shape.hidden
    return new


# ---------------------------------------------------------------- cutting


def _top(scores, keep: int):
    import torch

    return torch.sort(torch.topk(scores, keep).indices).values


def _narrow(model, shape: Shape, scores: dict):
    """(the new config, the state dict cut to `shape`) keeping the most important of each."""
    import torch

    old = model_shape(model.config)
    head_dim, group, new_group = _head_dim(model.config), old.heads // old.kv_heads, shape.heads // shape.kv_heads
    channels = _top(scores["channels"], shape.hidden)
    per_layer = []
    for i in range(old.layers):
        heads = scores["heads"][i]
        if shape.kv_heads == old.kv_heads:  # the best `new_group` query heads of each KV group
            q = torch.cat([k * group + _top(heads[k * group : (k + 1) * group], new_group) for k in range(old.kv_heads)])
            kv = torch.arange(old.kv_heads)
        else:  # group size 1: a head and its KV head go together
            kv = q = _top(heads, shape.heads)
        per_layer.append((_rows(q, head_dim), _rows(kv, head_dim), _top(scores["neurons"][i], shape.intermediate)))
    scale = math.sqrt(shape.hidden / old.hidden)  # see _gemma_post_norm
    rescale = shape.hidden != old.hidden and hasattr(model.get_input_embeddings(), "embed_scale")
    state = {}
    for name, w in model.state_dict().items():
        match = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if not match:
            state[name] = _cut_outer(name, w, channels, old)
            continue
        q, kv, neurons = per_layer[int(match.group(1))]
        cut = _cut_layer(match.group(2), w, q, kv, neurons, channels, old, head_dim)
        if rescale and re.search(r"post_(attention|feedforward)_layernorm\.weight$", name):
            cut = _gemma_post_norm(cut, scale)
        state[name] = cut
    return _reshaped(model.config, shape), state


def _gemma_post_norm(weight, scale: float):
    """Gemma multiplies the embedding by sqrt(hidden size), which shrinks with the hidden width.
    Every read of the residual stream goes through an RMSNorm, which ignores a common scale, so
    scaling what each layer adds to the stream by the same factor keeps the model's function:
    Gemma's norms multiply by (1 + weight)."""
    return scale * (1 + weight) - 1


def _rows(heads, head_dim: int):
    import torch

    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _cut_layer(name: str, w, q, kv, neurons, channels, old: Shape, head_dim: int):
    import torch

    kind = name.rsplit(".", 1)[0].split(".")[-1]  # q_proj, gate_up_proj, input_layernorm ...
    is_weight = name.endswith(".weight")
    q_rows, kv_rows = old.heads * head_dim, old.kv_heads * head_dim
    rows = {
        "q_proj": q, "k_proj": kv, "v_proj": kv, "gate_proj": neurons, "up_proj": neurons, "o_proj": channels, "down_proj": channels,
        "qkv_proj": torch.cat([q, q_rows + kv, q_rows + kv_rows + kv]),
        "gate_up_proj": torch.cat([neurons, old.intermediate + neurons]),
    }.get(kind)
    columns = {"o_proj": q, "down_proj": neurons}.get(kind, channels)
    if rows is not None:
        w = w[rows]
        return w[:, columns].contiguous() if is_weight and w.ndim == 2 else w.contiguous()
    if w.ndim == 1 and "norm" in kind:
        return w if w.shape[0] != old.hidden or kind in ("q_norm", "k_norm") else w[channels].contiguous()
    raise InvalidModelError(f"kecil does not know how to prune the tensor {name} ({tuple(w.shape)}) of this architecture")


def _cut_outer(name: str, w, channels, old: Shape):
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return w[:, channels].contiguous()
    if w.ndim == 1 and w.shape[0] == old.hidden and "norm" in name:
        return w[channels].contiguous()
    raise InvalidModelError(f"kecil does not know how to prune the tensor {name} ({tuple(w.shape)}) of this architecture")


def _drop_layers(model, removed: list[int]):
    """(the new config, the state dict without the `removed` layers, the rest renumbered)."""
    import copy

    old = model_shape(model.config)
    kept = [i for i in range(old.layers) if i not in set(removed)]
    new_index = {old_i: new_i for new_i, old_i in enumerate(kept)}
    state = {}
    for name, w in model.state_dict().items():
        match = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if not match:
            state[name] = w
        elif int(match.group(1)) in new_index:
            state[f"model.layers.{new_index[int(match.group(1))]}.{match.group(2)}"] = w
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):  # Gemma 3 and Qwen2 keep each layer's attention kind (sliding or full)
        config.layer_types = [config.layer_types[i] for i in kept]
    return config, state


def _build(config, state: dict):
    """The pruned model, loaded strictly: a tensor whose shape the new config does not expect fails here, not in the user's hands."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise InvalidModelError(f"the pruned weights do not fit the pruned config (missing {missing[:3]}, unexpected {unexpected[:3]}): please report this")
    if tied:
        model.tie_weights()
    return model.eval()


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
        if not output.exists():
            os.replace(pruned, output)  # the pruned (unhealed) model stays where it was asked for
        raise
    shutil.rmtree(pruned, ignore_errors=True)
    return result.to_dict()
