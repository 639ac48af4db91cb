"""Our parameters and shape to and from Hugging Face's Olmo2 names and config.json, in pure torch,
and an Olmo2 checkpoint directory (config.json + safetensors) read as our shape and weights.

The block is OLMo2's, so every tensor maps one to one onto transformers' `Olmo2ForCausalLM` names
without reshaping: that is what lets an isotropic model load as a native Olmo2 and a layer-wise
one keep the same names layer by layer in the remote-code model. The mapping lives here once and
is used both ways, so export and import cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise.nn.model import Transformer, rope_tables
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape, NormOrder
from layerwise.util.errors import UserError

NATIVE_MODEL_TYPE = "olmo2"
NATIVE_ARCHITECTURE = "Olmo2ForCausalLM"
LAYERWISE_MODEL_TYPE = "layerwise_olmo2"
LAYERWISE_ARCHITECTURE = "LayerwiseOlmo2ForCausalLM"
MODELING_FILE = "modeling_layerwise_olmo2.py"
"""The remote-code module copied into an export (a template in this package)."""
PROFILE_KEY = "layerwise_profile"
"""config.json key naming the profile an export was trained as, to label an imported run."""
TRAIN_SEQ_LEN_KEY = "layerwise_train_seq_len"
"""config.json key holding the context the model was trained with (data.seq_len).

`max_position_embeddings` is what scoring tools may feed the model (lm-eval refuses an answer
longer than it), which RoPE allows past the training context; this key keeps the training
context itself, for import (data.seq_len) and for generation's default context."""

_BLOCK_NAMES = {
    "attention.w_q.weight": "self_attn.q_proj.weight",
    "attention.w_k.weight": "self_attn.k_proj.weight",
    "attention.w_v.weight": "self_attn.v_proj.weight",
    "attention.w_o.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
    "attention_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ffn_norm.weight": "post_feedforward_layernorm.weight",
}
_TOP_NAMES = {
    "embedding.weight": "model.embed_tokens.weight",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def hf_name(ours: str) -> str:
    """The transformers name of one of our parameters (`blocks.3.ffn.w1.weight` -> ...)."""
    if ours in _TOP_NAMES:
        return _TOP_NAMES[ours]
    _, index, rest = ours.split(".", 2)
    return f"model.layers.{index}.{_BLOCK_NAMES[rest]}"


def to_hf_state(state: Mapping[str, torch.Tensor], shape: ModelShape) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' names; a tied LM head is left out, as transformers
    saves it (safetensors refuses shared tensors, and the loader re-ties it)."""
    return {
        hf_name(name): tensor.detach().contiguous()
        for name, tensor in state.items()
        if not (shape.tie_embeddings and name == "lm_head.weight")
    }


def from_hf_state(
    tensors: Mapping[str, torch.Tensor], shape: ModelShape, where: str
) -> dict[str, torch.Tensor]:
    """Transformers' tensors under our names, every expected one present and of the right size.

    Checked here rather than by `load_state_dict`, so a wrong file says which tensor and where.
    """
    from layerwise.nn.model import Transformer

    with torch.device("meta"):
        expected = Transformer(shape).state_dict()
    names = {hf_name(ours): ours for ours in expected}
    if shape.tie_embeddings:
        names.pop("lm_head.weight")
    missing = sorted(set(names) - set(tensors))
    unexpected = sorted(set(tensors) - set(names) - {"lm_head.weight"})
    if missing or unexpected:
        raise UserError(
            f"{where}: the weights do not match config.json (missing: "
            f"{', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})"
        )
    state = {}
    for theirs, ours in names.items():
        tensor = tensors[theirs]
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise UserError(
                f"{where}: {theirs} has shape {list(tensor.shape)}, config.json implies "
                f"{list(expected[ours].shape)}"
            )
        state[ours] = tensor.float()
    if shape.tie_embeddings:
        state["lm_head.weight"] = state["embedding.weight"]
    return state


def is_isotropic(shape: ModelShape) -> bool:
    """Every layer has the same widths: transformers' own Olmo2 can hold it."""
    return len(set(shape.layers)) == 1


def check_exportable(norm_order: NormOrder) -> None:
    """Refuse a block transformers has no layer for, so that a run which is to be exported
    (`run.export_at_end`) is refused before it trains, not after."""
    if norm_order != "reordered":
        raise UserError(
            f"model.norm_order={norm_order}: only the reordered norm (OLMo2's block) "
            "has a Hugging Face architecture to export to"
        )


def hf_config(
    shape: ModelShape,
    options: BlockOptions,
    eos_id: int,
    dtype: torch.dtype,
    max_positions: int | None = None,
) -> dict[str, Any]:
    """config.json for the shape: native Olmo2 when isotropic, else our remote-code model.

    `num_attention_heads` and friends are the largest per-layer values in the layer-wise config,
    for generic tools that size buffers from them; the model reads the per-layer lists.
    `max_position_embeddings` is `max_positions` (default: the training context
    `options.max_seq_len`, which is always written as TRAIN_SEQ_LEN_KEY). Both models compute
    RoPE from the positions on the fly, so no table limits them to either.
    """
    check_exportable(options.norm_order)
    first = shape.layers[0]
    common: dict[str, Any] = {
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.d_model,
        "num_hidden_layers": shape.n_layers,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions or options.max_seq_len,
        TRAIN_SEQ_LEN_KEY: options.max_seq_len,
        "rms_norm_eps": options.norm_eps,
        "rope_theta": options.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": options.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": options.init_std,
        "tie_word_embeddings": shape.tie_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if is_isotropic(shape):
        return {
            "architectures": [NATIVE_ARCHITECTURE],
            "model_type": NATIVE_MODEL_TYPE,
            **common,
            "intermediate_size": first.d_ffn,
            "num_attention_heads": first.n_heads,
            "num_key_value_heads": first.n_kv_heads,
        }
    module = MODELING_FILE.removesuffix(".py")
    return {
        "architectures": [LAYERWISE_ARCHITECTURE],
        "model_type": LAYERWISE_MODEL_TYPE,
        "auto_map": {
            "AutoConfig": f"{module}.LayerwiseOlmo2Config",
            "AutoModelForCausalLM": f"{module}.{LAYERWISE_ARCHITECTURE}",
        },
        **common,
        "intermediate_sizes": [layer.d_ffn for layer in shape.layers],
        "num_attention_heads_per_layer": [layer.n_heads for layer in shape.layers],
        "num_key_value_heads_per_layer": [layer.n_kv_heads for layer in shape.layers],
        "intermediate_size": max(layer.d_ffn for layer in shape.layers),
        "num_attention_heads": max(layer.n_heads for layer in shape.layers),
        "num_key_value_heads": max(layer.n_kv_heads for layer in shape.layers),
    }


@dataclass(frozen=True)
class HfArchitecture:
    """What a config.json says about the model, in our terms; `options.max_seq_len` is the
    training context (`training_context`), not the longer `max_position_embeddings`."""

    shape: ModelShape
    options: BlockOptions
    eos_id: int | None


def read_hf_config(config: Mapping[str, Any], where: str) -> HfArchitecture:
    """Shape and block options from an Olmo2 or layer-wise Olmo2 config.json; anything else
    (another architecture, biases, rope scaling) is refused with what and where."""
    model_type = config.get("model_type")
    if model_type not in (NATIVE_MODEL_TYPE, LAYERWISE_MODEL_TYPE):
        raise UserError(
            f"{where}: model_type {model_type!r} (architectures {config.get('architectures')}) "
            f"cannot be imported; only {NATIVE_MODEL_TYPE!r} (OLMo 2) and "
            f"{LAYERWISE_MODEL_TYPE!r} (a layerwise export) checkpoints have our block"
        )
    _refuse_unsupported(config, where)
    try:
        n_layers = int(config["num_hidden_layers"])
        d_model = int(config["hidden_size"])
        n_heads = _per_layer(config, "num_attention_heads", n_layers)
        n_kv = _per_layer(config, "num_key_value_heads", n_layers, default=n_heads)
        d_ffn = _per_layer(config, "intermediate_size", n_layers)
        head_dim = int(config.get("head_dim") or d_model // n_heads[0])
        shape = ModelShape(
            d_model=d_model,
            head_dim=head_dim,
            vocab_size=int(config["vocab_size"]),
            layers=tuple(
                LayerSpec(d_ffn=f, n_heads=h, n_kv_heads=k)
                for f, h, k in zip(d_ffn, n_heads, n_kv, strict=True)
            ),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
        rope = config.get("rope_parameters") or {}
        options = BlockOptions(
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 500_000.0))),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            max_seq_len=training_context(config),
            init_std=float(config.get("initializer_range", 0.02)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: config.json is incomplete or malformed ({exc!r})") from None
    return HfArchitecture(shape, options, _eos_id(config.get("eos_token_id")))


def training_context(config: Mapping[str, Any]) -> int:
    """The context the checkpoint was trained with: TRAIN_SEQ_LEN_KEY in our exports, else (an
    export made before that key, or another Olmo2) `max_position_embeddings`."""
    return int(config.get(TRAIN_SEQ_LEN_KEY) or config.get("max_position_embeddings", 4096))


def _refuse_unsupported(config: Mapping[str, Any], where: str) -> None:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    problems = [
        "attention_bias=true" if config.get("attention_bias") else "",
        f"hidden_act={config.get('hidden_act')}"
        if config.get("hidden_act", "silu") != "silu"
        else "",
        f"rope_type={rope.get('rope_type')}"
        if rope.get("rope_type", "default") != "default"
        else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise UserError(
            f"{where}: {', '.join(problems)} is not part of our block and cannot be imported"
        )


def _per_layer(
    config: Mapping[str, Any], key: str, n_layers: int, default: list[int] | None = None
) -> list[int]:
    """The per-layer list of a layer-wise config, else the single value repeated."""
    lists = {
        "num_attention_heads": "num_attention_heads_per_layer",
        "num_key_value_heads": "num_key_value_heads_per_layer",
        "intermediate_size": "intermediate_sizes",
    }
    values = config.get(lists[key])
    if values is not None:
        if len(values) != n_layers:
            raise ValueError(f"{lists[key]} has {len(values)} entries for {n_layers} layers")
        return [int(v) for v in values]
    if config.get(key) is None and default is not None:
        return default
    return [int(config[key])] * n_layers


def _eos_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def read_architecture(hf_dir: Path) -> tuple[HfArchitecture, dict[str, Any]]:
    """The shape of the checkpoint in `hf_dir`, from its config.json."""
    path = hf_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir} holds no config.json: is it a Hugging Face model directory?")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc})") from None
    return read_hf_config(document, str(path)), document


def load_hf_state(hf_dir: str | Path) -> tuple[ModelShape, dict[str, torch.Tensor]]:
    """Shape and weights (our names, float32) of an HF checkpoint directory."""
    hf_dir = Path(hf_dir)
    arch, _ = read_architecture(hf_dir)
    return arch.shape, from_hf_state(read_tensors(hf_dir), arch.shape, str(hf_dir))


def load_hf_model(hf_dir: str | Path) -> tuple[Transformer, HfArchitecture]:
    """Our model with the checkpoint's weights, in eval mode on the CPU."""
    hf_dir = Path(hf_dir)
    arch, _ = read_architecture(hf_dir)
    state = from_hf_state(read_tensors(hf_dir), arch.shape, str(hf_dir))
    with torch.device("meta"):
        model = Transformer(arch.shape, arch.options)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state)
    cos, sin = rope_tables(arch.shape.head_dim, arch.options.max_seq_len, arch.options.rope_theta)
    model.rope_cos, model.rope_sin = cos, sin  # to_empty left these non-persistent buffers unset
    return model.eval(), arch


def read_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of `model.safetensors` or of the shards its index lists."""
    from safetensors.torch import load_file

    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise UserError(
            f"{hf_dir} has no model.safetensors (or model.safetensors.index.json); only "
            "safetensors checkpoints can be imported"
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as exc:
            raise UserError(f"{file} is not a readable safetensors file ({exc})") from None
    return tensors
