"""Layer-wise OLMo 2 for transformers: an Olmo2 whose layers each have their own widths.

This file is copied next to an exported checkpoint and loaded with
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`; it is self-contained (torch
and transformers only). The block is transformers' Olmo2 (reordered norm, QK-norm over the whole
q and k projections, rotate-half RoPE, GQA, SwiGLU) with the same parameter names, layer by layer;
only the widths differ: layer i has `intermediate_sizes[i]`, `num_attention_heads_per_layer[i]`
query heads and `num_key_value_heads_per_layer[i]` key/value heads of `head_dim` each. It keeps
clear of transformers' attention registry and mask helpers, whose signatures change between
releases, and uses SDPA with an explicit mask; the cache is transformers' own `DynamicCache`,
whose layers are sized by the keys they receive, so per-layer head counts need nothing special.
Written for transformers 5.x and 4.48+.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

_V5 = int(transformers.__version__.split(".")[0]) >= 5
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)
"""transformers 5 renamed the output's `past_key_values` to `cache`."""


class LayerwiseOlmo2Config(PretrainedConfig):
    """Olmo2's config with per-layer lists for the FFN width and the head counts."""

    model_type = "layerwise_olmo2"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 50304,
        hidden_size: int = 768,
        num_hidden_layers: int = 2,
        head_dim: int = 64,
        intermediate_sizes: list[int] | None = None,
        num_attention_heads_per_layer: list[int] | None = None,
        num_key_value_heads_per_layer: list[int] | None = None,
        max_position_embeddings: int = 4096,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 500_000.0,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.head_dim = head_dim
        self.intermediate_sizes = list(intermediate_sizes or [4 * hidden_size] * num_hidden_layers)
        heads = num_attention_heads_per_layer or [hidden_size // head_dim] * num_hidden_layers
        self.num_attention_heads_per_layer = list(heads)
        self.num_key_value_heads_per_layer = list(num_key_value_heads_per_layer or heads)
        for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads"):
            kwargs.pop(key, None)
        self.intermediate_size = max(self.intermediate_sizes)
        self.num_attention_heads = max(self.num_attention_heads_per_layer)
        self.num_key_value_heads = max(self.num_key_value_heads_per_layer)
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.hidden_act = kwargs.pop("hidden_act", "silu")
        kwargs.pop("rope_parameters", None)
        kwargs.pop("rope_scaling", None)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class LayerwiseOlmo2RMSNorm(nn.Module):
    """Olmo2RMSNorm: normalised in float32, weighted, returned in the input dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (self.weight * hidden).to(dtype)


def rotary(
    config: LayerwiseOlmo2Config, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [batch, seq, head_dim] for the positions, computed in float32 on the fly
    (no buffer, so loading on the meta device has nothing to re-initialise)."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device) / dim
    inv_freq = 1.0 / config.rope_theta**exponents
    freqs = position_ids[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


class LayerwiseOlmo2Attention(nn.Module):
    def __init__(self, config: LayerwiseOlmo2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads_per_layer[layer_idx]
        self.num_kv_heads = config.num_key_value_heads_per_layer[layer_idx]
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, config.hidden_size, bias=False)
        self.q_norm = LayerwiseOlmo2RMSNorm(q_dim, config.rms_norm_eps)
        self.k_norm = LayerwiseOlmo2RMSNorm(kv_dim, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        heads = (batch, seq, -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden)).view(heads).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden)).view(heads).transpose(1, 2)
        v = self.v_proj(hidden).view(heads).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.num_key_value_groups > 1:
            k = k.repeat_interleave(self.num_key_value_groups, dim=1)
            v = v.repeat_interleave(self.num_key_value_groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class LayerwiseOlmo2MLP(nn.Module):
    def __init__(self, config: LayerwiseOlmo2Config, layer_idx: int) -> None:
        super().__init__()
        width = config.intermediate_sizes[layer_idx]
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LayerwiseOlmo2DecoderLayer(nn.Module):
    def __init__(self, config: LayerwiseOlmo2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LayerwiseOlmo2Attention(config, layer_idx)
        self.mlp = LayerwiseOlmo2MLP(config, layer_idx)
        eps = config.rms_norm_eps
        self.post_attention_layernorm = LayerwiseOlmo2RMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = LayerwiseOlmo2RMSNorm(config.hidden_size, eps)

    def forward(
        self,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        hidden = hidden + self.post_attention_layernorm(self.self_attn(hidden, rope, mask, cache))
        return hidden + self.post_feedforward_layernorm(self.mlp(hidden))


class LayerwiseOlmo2PreTrainedModel(PreTrainedModel):
    config_class = LayerwiseOlmo2Config
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["LayerwiseOlmo2DecoderLayer"]
    _supports_sdpa = True
    _supports_cache_class = True


def attention_mask_4d(
    attention_mask: torch.Tensor | None, batch: int, seq: int, past: int, device: torch.device
) -> torch.Tensor:
    """Boolean [batch, 1, seq, past + seq]: causal, without padded keys. A padded query still
    sees itself, so its softmax is defined (its output is never used)."""
    total = past + seq
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None].expand(batch, 1, seq, total)
    if attention_mask is None:
        return allowed
    keys = attention_mask[:, None, None, -total:].bool()
    return (allowed & keys) | (k_pos == q_pos)[None, None]


def position_ids_from(
    attention_mask: torch.Tensor | None, batch: int, seq: int, past: int, device: torch.device
) -> torch.Tensor:
    """Positions that skip left padding, as transformers' generate() computes them."""
    if attention_mask is None:
        return torch.arange(past, past + seq, device=device)[None].expand(batch, seq)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -seq:]


class LayerwiseOlmo2Model(LayerwiseOlmo2PreTrainedModel):
    def __init__(self, config: LayerwiseOlmo2Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LayerwiseOlmo2DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = LayerwiseOlmo2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        batch, seq, _ = hidden.shape
        past = cache.get_seq_length() if cache is not None else 0
        padding = (
            attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        )
        if attention_mask is not None and padding is None:
            mask = attention_mask
        else:
            mask = attention_mask_4d(padding, batch, seq, past, hidden.device)
        if position_ids is None:
            position_ids = position_ids_from(padding, batch, seq, past, hidden.device)
        rope = rotary(self.config, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, rope, mask, cache)
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(hidden), **{_CACHE_FIELD: cache if use_cache else None}
        )


class LayerwiseOlmo2ForCausalLM(LayerwiseOlmo2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = (
        {"lm_head.weight": "model.embed_tokens.weight"} if _V5 else ["lm_head.weight"]
    )

    def __init__(self, config: LayerwiseOlmo2Config) -> None:
        super().__init__(config)
        self.model = LayerwiseOlmo2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)}
        )
