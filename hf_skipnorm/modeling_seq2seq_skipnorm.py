"""SkipNorm encoder-decoders: the Transformer of Vaswani et al. 2017 (BART, Marian, mBART, M2M100/NLLB, T5) with the
family's three axes on every sublayer.

Identical to the decoder-only family (modeling_skipnorm.py) except:
- the encoder is a stack of the family's own blocks, bidirectional (every placement, norm type, residual and block
  topology of the catalogue applies, since it *is* that block);
- each decoder block has three sublayers, self-attention, cross-attention and the MLP, each computing
  ``N_post(R(x, N_out(F(N_in(x)))))``; cross-attention takes the placement of the decoder's attention sublayer, so
  its slots are `cross_attn_pre_norm` / `cross_attn_out_norm` / `cross_attn_post_norm` and its combine
  `cross_attn_residual`. Placements and residuals that rewire a two-sublayer block (B2T, ResiDual, hyper-connections,
  DenseFormer, parallel blocks) are refused for the decoder by the config, with the reason;
- the stacks share one token embedding (`model.embed_tokens`) and one lm_head tied to it;
- positions may also be sinusoidal (Marian's layout, or fairseq's table as in M2M100/NLLB) or T5's bucketed relative
  attention bias (bidirectional in the encoder, causal in the decoder, one table per stack shared by its blocks);
- generation runs through `GenerationMixin` with an `EncoderDecoderCache` (cross-attention keys and values computed
  once per generation).

The per-stack configs come from `SkipNormConfig.stack_config` ("encoder" / "decoder": `decoder_overrides` applied),
so each stack is built, initialized and validated by the same code as a standalone SkipNorm model of its depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_skipnorm import PLACEMENT_SLOTS, SkipNormConfig, SublayerNorms
from .modeling_skipnorm import (
    BLOCK_CLASSES,
    SkipNormAttention,
    SkipNormBlock,
    SkipNormLearnedPositions,
    SkipNormModel,
    SkipNormNoPositions,
    SkipNormPreTrainedModel,
    SkipNormRotaryEmbedding,
    block_topology,
    build_dropout,
    build_token_embedding,
    check_inputs,
    fp32_residual_patterns,
    build_residual,
    build_stream,
    eager_attention_forward,
    reduce_captured_streams,
)
from .norms_skipnorm import build_norm, fold_affine
from .residuals_skipnorm import AdminResidual


# ----------------------------------------------------------------------------------------------------- positions
class SkipNormOffsetLearnedPositions(SkipNormLearnedPositions):
    """Learned absolute positions, row ``position + position_offset`` (BART and mBART start their table at row 2)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.offset = int(config.position_offset)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor):
        return super().forward(hidden_states, position_ids + self.offset)


class SkipNormSinusoidalPositions(nn.Module):
    """Fixed sinusoids (Vaswani et al. 2017, Sec. 3.5) with the frequencies ``w_i = 10000^(-2i/d)``, laid out as
    Marian stores them: ``[sin(p w_0), ..., sin(p w_{d/2-1}), cos(p w_0), ..., cos(p w_{d/2-1})]`` (not interleaved),
    ``p = position + position_offset``. Computed in float64 from the position ids (no table to load or wipe).
    """

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.dim = config.hidden_size
        self.offset = int(config.position_offset)

    def encoding(self, positions: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, d), float64
        channel = torch.arange(self.dim, device=positions.device)
        exponent = (2 * (channel // 2)).double() / self.dim  # channel j carries frequency index j // 2
        angles = positions[..., None].double() / torch.pow(10000.0, exponent)  # (B, T, d)
        return torch.cat((torch.sin(angles[..., 0::2]), torch.cos(angles[..., 1::2])), dim=-1)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor):
        return hidden_states + self.encoding(position_ids + self.offset).to(hidden_states.dtype), None


class SkipNormFairseqSinusoidalPositions(nn.Module):
    """fairseq's sinusoids (tensor2tensor's variant; M2M100, NLLB): ``w_i = 10000^(-i/(d/2 - 1))``, sines then
    cosines, row ``p = position + position_offset`` where positions count the non-pad tokens (M2M100:
    ``position_offset = pad_token_id + 1``); pad tokens (position id -1) get the zero vector, as fairseq's zeroed
    padding row gives them. float32 arithmetic in fairseq's order, so converted checkpoints match bit for bit.
    """

    def __init__(self, config: SkipNormConfig):
        super().__init__()
        self.dim = config.hidden_size
        self.offset = int(config.position_offset)

    def encoding(self, position_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, d), float32
        half = self.dim // 2
        step = math.log(10000) / (half - 1)
        frequencies = torch.exp(torch.arange(half, device=position_ids.device).float() * -step)  # (d/2,)
        rows = (position_ids.clamp(min=0) + self.offset).float()[..., None] * frequencies  # (B, T, d/2)
        table = torch.cat((torch.sin(rows), torch.cos(rows)), dim=-1)
        if self.dim % 2 == 1:
            table = torch.cat((table, torch.zeros_like(table[..., :1])), dim=-1)
        return table * (position_ids >= 0)[..., None]

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor):
        return hidden_states + self.encoding(position_ids).to(hidden_states.dtype), None


SEQ2SEQ_POSITION_CLASSES: dict[str, type[nn.Module]] = {
    "rope": SkipNormRotaryEmbedding,
    "learned": SkipNormOffsetLearnedPositions,
    "none": SkipNormNoPositions,
    "sinusoidal": SkipNormSinusoidalPositions,
    "sinusoidal_fairseq": SkipNormFairseqSinusoidalPositions,
    "t5_relative": SkipNormNoPositions,  # T5 adds nothing to the embeddings; its bias acts on the scores
}


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of ``key - query`` (Raffel et al. 2020, Sec. 2.1; Mesh TensorFlow): exact buckets for the
    ``num_buckets / 2`` nearest offsets, log-spaced ones up to `max_distance`, one for all beyond. Bidirectional:
    half the buckets for keys after the query. Causal: keys after the query all share bucket 0 (they are masked)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class SkipNormRelativePositionBias(nn.Module):
    """T5's relative attention bias: ``scores_h(q, k) += b_h[bucket(k - q)]``, one table (buckets, H) per stack,
    computed once and added to every block's attention mask (T5 computes it in block 0 and passes it on)."""

    def __init__(self, config: SkipNormConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_attention_heads)

    def forward(self, mask: torch.Tensor | None, query_length: int, key_length: int, past: int,
                dtype: torch.dtype) -> torch.Tensor:  # -> (B or 1, H, T, S) additive
        device = self.relative_attention_bias.weight.device
        query = torch.arange(query_length, device=device)[:, None] + past
        key = torch.arange(key_length, device=device)[None, :]
        bucket = relative_position_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        bias = self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0).to(dtype)  # (1, H, T, S)
        return bias if mask is None else bias + additive_mask(mask, dtype)


class NoScoreBias(nn.Module):
    """No bias on the attention scores: the mask passes through (every position type but `t5_relative`)."""

    def forward(self, mask, query_length: int, key_length: int, past: int, dtype: torch.dtype):
        return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = attend, SDPA's form) as the additive float mask eager attention uses."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def build_score_bias(config: SkipNormConfig, bidirectional: bool) -> nn.Module:
    if config.position_embedding == "t5_relative":
        return SkipNormRelativePositionBias(config, bidirectional)
    return NoScoreBias()


def stack_position_ids(config: SkipNormConfig, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor,
                       attention_mask: torch.Tensor | None, cache: Cache | None) -> torch.Tensor:
    """(B, T) positions counted from each row's first real token (the decoder-only family's rule,
    `SkipNormModel.default_position_ids`): with right padding, or none, that is BART's, Marian's and T5's
    ``past, past + 1, ...`` for every real token; left-padded rows get the positions they have unpadded. With
    fairseq's sinusoids the count skips pad tokens found in `input_ids`, which get -1 (M2M100's rule); given
    `inputs_embeds` instead, the positions are ``past, past + 1, ...`` whatever the mask (M2M100's
    `create_position_ids_from_inputs_embeds`: "we cannot infer which are padded")."""
    if config.position_embedding == "sinusoidal_fairseq" and config.pad_token_id is not None:
        past = cache.get_seq_length() if cache is not None else 0
        if input_ids is None:
            return (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).expand(
                inputs_embeds.shape[:2])
        real = input_ids != config.pad_token_id
        counted = real.long().cumsum(-1) - 1 + past
        return torch.where(real, counted, torch.full_like(counted, -1))
    return SkipNormModel.default_position_ids(inputs_embeds, attention_mask, cache).expand(inputs_embeds.shape[:2])


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None,
                       decoder_start_token_id: int | None) -> torch.Tensor:
    """Teacher forcing: ``[start, y_1, ..., y_{T-1}]`` from labels ``[y_1, ..., y_T]`` (-100 becomes pad)."""
    if decoder_start_token_id is None:
        raise ValueError("SkipNormConfig.decoder_start_token_id=None is not valid for shifting labels right; set it "
                         "(BART: eos, Marian and T5: pad)")
    if pad_token_id is None:
        raise ValueError("SkipNormConfig.pad_token_id=None is not valid for shifting labels right; set it")
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


# ----------------------------------------------------------------------------------------------------- cross-attention
class SkipNormCrossAttention(SkipNormAttention):
    """``o_proj(softmax(q k^T / sqrt(hd)) v)`` with ``q`` from the decoder stream and ``k, v`` from the encoder output;
    the in-branch norms of `SkipNormAttention` (Q/K norms, HybridNorm's QKV-norm, HeadScale, Sub-LN) apply alike.
    No RoPE (positions are those of two different sequences) and no causal mask. With an `EncoderDecoderCache` the
    keys and values are computed at the first step and read back afterwards (the encoder output does not change)."""

    def __init__(self, config: SkipNormConfig, layer_idx: int, norms: SublayerNorms = SublayerNorms(),
                 init_gain: float = 1.0):
        super().__init__(config, layer_idx, norms, init_gain)
        self.is_causal = False

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C) decoder stream
        encoder_hidden_states: torch.Tensor,  # (B, S, C)
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        query = self.q_norm(self.q_proj(hidden_states).view(*input_shape, *self.qk_norm_shape))
        query = query.view(*input_shape, -1, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        if cache is not None and cache.is_updated.get(self.layer_idx):
            key = cache.cross_attention_cache.layers[self.layer_idx].keys
            value = cache.cross_attention_cache.layers[self.layer_idx].values
        else:
            source_shape = encoder_hidden_states.shape[:-1]
            key = self.k_norm(self.k_proj(encoder_hidden_states).view(*source_shape, *self.qk_norm_shape))
            key = key.view(*source_shape, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, S, hd)
            value = self.v_norm(self.v_proj(encoder_hidden_states).view(*source_shape, -1, self.head_dim))
            value = value.transpose(1, 2)  # (B, H_kv, S, hd)
            if cache is not None:
                key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        kwargs["is_causal"] = False  # the decoder's config says causal; cross-attention never is
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, softcap=self.softcap,
            **kwargs,
        )
        attn_output = self.head_scale_norm(attn_output)  # (B, T, H, hd)
        attn_output = self.sub_norm(attn_output.reshape(*input_shape, -1).contiguous())
        return self.o_proj(attn_output), attn_weights


# ----------------------------------------------------------------------------------------------------- decoder block
class SkipNormDecoderBlock(SkipNormBlock):
    """A decoder block: self-attention, cross-attention, MLP, each ``N_post(R(x, N_out(F(N_in(x)))))``::

        x = attn_post_norm(attn_residual(x, attn_out_norm(SelfAttn(attn_pre_norm(x)))))
        x = cross_attn_post_norm(cross_attn_residual(x, cross_attn_out_norm(CrossAttn(cross_attn_pre_norm(x), enc))))
        x = mlp_post_norm(mlp_residual(x, mlp_out_norm(MLP(mlp_pre_norm(x)))))

    Cross-attention takes the attention sublayer's placement (`attn_norm_position`, else `norm_position`): post-LN
    BART/Marian norm after each of the three skips, pre-LN mBART/M2M100/T5 before each branch. Admin's omegas are
    indexed 3 per layer (self, cross, MLP).
    """

    def __init__(self, config: SkipNormConfig, layer_idx: int, admin_omegas: list | None = None):
        super().__init__(config, layer_idx)
        attn_position = config.layer_norm_positions(layer_idx)[0]
        attn_norms = PLACEMENT_SLOTS[attn_position][0]
        d = config.hidden_size
        magneto = config.subln_init_gain if attn_position == "subln" else 1.0
        self.cross_attn_pre_norm = build_norm(config, d, attn_norms.pre, "attn", config.norm_depth_scale(layer_idx))
        self.cross_attn = SkipNormCrossAttention(config, layer_idx, attn_norms, magneto)
        self.cross_attn_out_norm = build_norm(config, d, attn_norms.out, "attn")
        self.cross_attn_residual = build_residual(config, layer_idx, "attn")
        self.cross_attn_post_norm = build_norm(config, d, attn_norms.post, "attn")
        for offset, residual in enumerate((self.attn_residual, self.cross_attn_residual, self.mlp_residual)):
            if isinstance(residual, AdminResidual):  # three sublayers per decoder layer, not two
                residual.sublayer_index = 3 * layer_idx + offset
                residual.omega_init = float(admin_omegas[residual.sublayer_index]) if admin_omegas else 1.0

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,  # (B, S, C); positional for gradient checkpointing
        encoder_attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        x = hidden_states
        self_cache = cache.self_attention_cache if cache is not None else None
        attn, _ = self.self_attn(
            self.attn_pre_norm(x), position_embeddings=position_embeddings, attention_mask=attention_mask,
            cache=self_cache, **kwargs,
        )
        x = self.attn_post_norm(self.attn_residual(x, self.branch_dropout(self.attn_out_norm(attn))))
        if encoder_hidden_states is not None:  # without an encoder output the block is self-attention + MLP (BART's)
            cross, _ = self.cross_attn(
                self.cross_attn_pre_norm(x), encoder_hidden_states, attention_mask=encoder_attention_mask, cache=cache,
                **kwargs,
            )
            x = self.cross_attn_post_norm(
                self.cross_attn_residual(x, self.branch_dropout(self.cross_attn_out_norm(cross)))
            )
        mlp = self.mlp(self.mlp_pre_norm(x))
        return self.mlp_post_norm(self.mlp_residual(x, self.branch_dropout(self.mlp_out_norm(mlp))))


# ----------------------------------------------------------------------------------------------------- stacks
class _SharedEmbedding:
    """The stacks read the token embedding of the model that owns it (`SkipNormEncoderDecoderModel.embed_tokens`: one
    tensor, one state-dict key), looked up at each use, so replacing the owner's embedding (`set_input_embeddings`,
    `resize_token_embeddings`, a plain assignment) reaches both stacks; it is never registered as their submodule."""

    def __init__(self, owner: nn.Module):
        self.owner = owner

    @property
    def embedding(self) -> nn.Embedding:
        return self.owner.embed_tokens

    @embedding.setter
    def embedding(self, value: nn.Embedding) -> None:
        self.owner.embed_tokens = value


class AdditiveScoreBiasBackends:
    """T5's relative bias is added to the attention mask as a float tensor: flash kernels take no additive bias and
    flex attention takes a BlockMask, so with `t5_relative` only eager and SDPA are offered (transformers' T5 too)."""

    @property
    def _supports_flash_attn(self) -> bool:
        return self.config.position_embedding != "t5_relative"

    @property
    def _supports_flex_attn(self) -> bool:
        return self.config.position_embedding != "t5_relative"


class SkipNormStack(AdditiveScoreBiasBackends, SkipNormPreTrainedModel):
    """What both stacks share: the embedding path ``embedding_norm(positions(scale * E[ids]))``, the score bias, the
    final norm. `config` is the stack's own (`SkipNormConfig.stack_config`).

    Inside an encoder-decoder the stack reads the owner's token embedding (`owner`). Built without an owner (a stack
    saved on its own and loaded with `SkipNormEncoder.from_pretrained`, as transformers' BART tests do with
    `model.get_encoder().save_pretrained`), it registers its own `embed_tokens`."""

    def __init__(self, config: SkipNormConfig, owner: nn.Module | None = None):
        super().__init__(config)
        if owner is None:
            self._modules["embed_tokens"] = build_token_embedding(config)
            self._shared = None
        else:
            self._shared = _SharedEmbedding(owner)  # `owner.embed_tokens` is the token embedding
        self.embed_positions = SEQ2SEQ_POSITION_CLASSES[config.position_embedding](config)
        self.score_bias = build_score_bias(config, bidirectional=not config.is_causal)
        self.embedding_norm = build_norm(config, config.hidden_size, config.embedding_norm)
        self.embedding_dropout = build_dropout(config.hidden_dropout)

    @property
    def embed_tokens(self) -> nn.Embedding:
        own = self._modules.get("embed_tokens")  # a standalone stack's (or one being saved on its own)
        return own if own is not None else self._shared.embedding

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if self._shared is None:
            self._modules["embed_tokens"] = value  # (the property named embed_tokens blocks add_module)
        else:
            self._shared.embedding = value

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saved on its own, a stack carries the token embedding it reads (one tensor, `embed_tokens.weight`), so the
        folder loads into a standalone stack; inside the encoder-decoder the embedding stays the owner's."""
        if self._shared is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        profiled = [m.omega_init for m in self.modules() if isinstance(m, AdminResidual) and m.omega_init != 1.0]
        if profiled and self.config.is_causal:
            raise ValueError(f"{type(self).__name__}.save_pretrained is not valid for the decoder of an Admin "
                             "encoder-decoder with profiled omegas: they live in the whole model's config "
                             "(decoder_overrides['admin_omegas']); save the whole model instead")
        self._modules["embed_tokens"] = self._shared.embedding
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self._modules["embed_tokens"]

    def embed(self, input_ids, inputs_embeds, attention_mask, cache: Cache | None):
        check_inputs(input_ids, inputs_embeds, self.config.vocab_size)  # the decoder family's checks, one call
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # * embedding_multiplier in the lookup
        position_ids = stack_position_ids(self.config, input_ids, inputs_embeds, attention_mask, cache)
        hidden_states, rotary = self.embed_positions(inputs_embeds, position_ids)
        return inputs_embeds, self.embedding_dropout(self.embedding_norm(hidden_states)), rotary


class SkipNormEncoder(SkipNormStack):
    """Bidirectional stack of the family's blocks (any topology: `BLOCK_CLASSES[block_topology]`)."""

    _can_record_outputs = {"hidden_states": SkipNormBlock, "attentions": SkipNormAttention}

    def __init__(self, config: SkipNormConfig, owner: nn.Module | None = None):
        super().__init__(config, owner)
        self.layers = nn.ModuleList(
            [BLOCK_CLASSES[block_topology(config, i)](config, i) for i in range(config.num_hidden_layers)]
        )
        self.residual_stream = build_stream(config)
        self.final_norm = build_norm(config, config.hidden_size, config.use_final_norm, "final")
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @reduce_captured_streams
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        inputs_embeds, hidden_states, rotary = self.embed(input_ids, inputs_embeds, attention_mask, None)
        seq_len = inputs_embeds.shape[1]
        with_bias = not isinstance(self.score_bias, NoScoreBias)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         allow_is_bidirectional_skip=not with_bias)
        mask = self.score_bias(mask, seq_len, seq_len, 0, inputs_embeds.dtype)
        stream = self.residual_stream.expand(hidden_states)
        for block in self.layers:
            stream = block(stream, attention_mask=mask, position_embeddings=rotary, **kwargs)
        return BaseModelOutput(last_hidden_state=self.final_norm(self.residual_stream.reduce(stream)))


class SkipNormDecoder(SkipNormStack):
    """Causal stack of `SkipNormDecoderBlock`s reading the encoder output through cross-attention. Called without
    `encoder_hidden_states` it runs as a causal language model whose blocks skip their cross-attention sublayer, as
    transformers' BART / T5 decoders do (`model.get_decoder()(input_ids)`)."""

    _can_record_outputs = {
        "hidden_states": SkipNormDecoderBlock,
        "attentions": OutputRecorder(SkipNormAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(SkipNormCrossAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: SkipNormConfig, owner: nn.Module | None = None, admin_omegas: list | None = None):
        super().__init__(config, owner)
        self.layers = nn.ModuleList(
            [SkipNormDecoderBlock(config, i, admin_omegas) for i in range(config.num_hidden_layers)]
        )
        self.final_norm = build_norm(config, config.hidden_size, config.use_final_norm, "final")
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise ValueError(f"SkipNormDecoder needs an EncoderDecoderCache (self- and cross-attention), got "
                             f"{type(cache).__name__}")
        past = cache.get_seq_length() if cache is not None else 0
        self_cache = cache.self_attention_cache if cache is not None else None
        inputs_embeds, hidden_states, rotary = self.embed(input_ids, inputs_embeds, attention_mask, self_cache)
        batch, seq_len = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + seq_len, device=inputs_embeds.device, dtype=torch.long)
        with_bias = not isinstance(self.score_bias, NoScoreBias)
        mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=self_cache, allow_is_causal_skip=not with_bias)
        # A static cache's mask spans its whole length (the slots past `past + seq_len` are masked out)
        key_length = mask.shape[-1] if isinstance(mask, torch.Tensor) else past + seq_len
        mask = self.score_bias(mask, seq_len, key_length, past, inputs_embeds.dtype)
        encoder_mask = None
        if encoder_hidden_states is not None:
            encoder_mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds,
                                                     attention_mask=encoder_attention_mask,
                                                     encoder_hidden_states=encoder_hidden_states)
        for block in self.layers:
            hidden_states = block(
                hidden_states, mask, encoder_hidden_states, encoder_attention_mask=encoder_mask,
                position_embeddings=rotary, cache=cache, use_cache=use_cache, **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.final_norm(hidden_states), cache=cache)


# ----------------------------------------------------------------------------------------------------- models
# Auto class -> class, written to config.json's `auto_map` by `save_pretrained` (as the decoder-only heads are).
SEQ2SEQ_AUTO_MAP_HEADS = {
    "AutoModel": "SkipNormEncoderDecoderModel",
    "AutoModelForSeq2SeqLM": "SkipNormForConditionalGeneration",
}


class SkipNormSeq2SeqPreTrainedModel(AdditiveScoreBiasBackends, SkipNormPreTrainedModel):
    """Shared behaviour of the encoder-decoder classes: the T5 bias needs the mask, so no flash or flex attention
    with it; Admin's profiling pass runs per stack; `auto_map` names the encoder-decoder classes."""

    auto_map_heads = SEQ2SEQ_AUTO_MAP_HEADS

    def check_tensor_parallel(self) -> None:
        """The config's tensor-parallel plan names the decoder-only layout (`layers.*`); under an encoder-decoder it
        would match nothing and every rank would silently hold the whole model: refuse instead."""
        tp_size = getattr(self, "_tp_size", None) or 1
        if tp_size > 1:
            raise ValueError(f"tp_size={tp_size} is not valid for {type(self).__name__}: tensor parallelism is not "
                             f"implemented for SkipNorm encoder-decoders; valid: tp_plan=None")

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SkipNormFinalLogitsBias):
            init.zeros_(module.bias)

    @torch.no_grad()
    def admin_profile(self, batch: torch.Tensor | dict) -> dict[str, list[float]]:
        """Admin's profiling pass (arXiv 2004.08249, Sec. 5) on both stacks, each with its own recurrence
        ``omega_1 = 1``, ``omega_{i+1} = sqrt(Var[omega_i x_i] + Var[F_i(x_i)])`` over its sublayers in forward order
        (the encoder's 2 per layer, the decoder's 3: self-attention, cross-attention, MLP), as the authors' code
        profiles encoder and decoder separately. The omegas go to `config.admin_omegas` (encoder) and
        `config.decoder_overrides["admin_omegas"]` (decoder), so `from_config` / `save_pretrained` reproduce them.
        `batch`: input ids (the decoder then reads them shifted right) or a dict with `decoder_input_ids` / `labels`.
        """
        base = self.model if hasattr(self, "model") else self
        stacks = {"encoder": base.encoder, "decoder": base.decoder}
        residuals = {name: sorted((m for m in stack.modules() if isinstance(m, AdminResidual)),
                                  key=lambda m: m.sublayer_index) for name, stack in stacks.items()}
        if not any(residuals.values()):
            raise ValueError("admin_profile needs residual='admin' in at least one stack (SkipNormConfig.residual or "
                             "decoder_overrides['residual'])")
        inputs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
        if "decoder_input_ids" not in inputs:
            labels = inputs.pop("labels", None)
            source = labels if labels is not None else inputs["input_ids"]
            inputs["decoder_input_ids"] = shift_tokens_right(source, self.config.pad_token_id,
                                                             self.config.decoder_start_token_id)
        inputs.pop("labels", None)
        omegas = {name: [1.0] * len(found) for name, found in residuals.items()}
        handles = []
        for name, found in residuals.items():
            running = [1.0]

            def profile(module: AdminResidual, args: tuple, name=name, running=running) -> None:
                x, y = args
                module.omega_init = running[0]
                omegas[name][module.sublayer_index] = running[0]
                skip = (module.omega_init + module.omega_bias.double()) * x.double()
                running[0] = math.sqrt(skip.var(unbiased=False).item() + y.double().var(unbiased=False).item())

            handles += [module.register_forward_pre_hook(profile) for module in found]
        was_training = self.training
        try:
            self.eval()
            self(**inputs, use_cache=False)
        finally:
            self.train(was_training)
            for handle in handles:
                handle.remove()
        if residuals["encoder"]:
            self.config.admin_omegas = omegas["encoder"]
            base.encoder.config.admin_omegas = omegas["encoder"]
        if residuals["decoder"]:
            self.config.decoder_overrides = {**(self.config.decoder_overrides or {}), "admin_omegas": omegas["decoder"]}
        return omegas


class SkipNormEncoderDecoderModel(SkipNormSeq2SeqPreTrainedModel):
    """Shared embedding -> encoder -> decoder (cross-attending to the encoder output); returns the decoder's last
    hidden state and the encoder's (`Seq2SeqModelOutput`). `AutoModel` builds it for configs with
    `is_encoder_decoder=True` (see `SkipNormModel`'s dispatch)."""

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        if not config.is_encoder_decoder:
            raise ValueError("SkipNormEncoderDecoderModel needs SkipNormConfig(is_encoder_decoder=True); decoder-only "
                             "and encoder-only models are SkipNormModel / SkipNormForCausalLM / SkipNormForMaskedLM")
        self.embed_tokens = build_token_embedding(config)  # (* embedding_multiplier in the lookup)
        self.encoder = SkipNormEncoder(config.stack_config("encoder"), self)
        self.decoder = SkipNormDecoder(config.stack_config("decoder"), self, config.decoder_admin_omegas)
        self._no_split_modules = sorted({type(layer).__name__ for stack in (self.encoder, self.decoder)
                                         for layer in stack.layers})
        self._keep_in_fp32_modules_strict = fp32_residual_patterns(self)  # the encoder's hyper-connections, if any
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value  # the stacks look it up here

    def get_encoder(self, modality: str | None = None) -> SkipNormEncoder:
        return self.encoder

    def get_decoder(self) -> SkipNormDecoder:
        return self.decoder

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass decoder_input_ids (or labels to the LM head), or input_ids to denoise them")
            # BART's convention: with no decoder inputs, reconstruct the source (denoising, and a plain forward works)
            decoder_input_ids = shift_tokens_right(input_ids, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state, encoder_attention_mask=attention_mask,
            cache=cache, inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class SkipNormFinalLogitsBias(nn.Module):
    """A fixed bias on the logits, kept as a buffer (BART's, Marian's and mBART's `final_logits_bias`: converted
    checkpoints carry theirs; zero otherwise, and never trained, as in those models)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.register_buffer("bias", torch.zeros(1, vocab_size), persistent=True)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.bias.to(logits.device)


class SkipNormForConditionalGeneration(SkipNormSeq2SeqPreTrainedModel, GenerationMixin):
    """Encoder-decoder with a language-model head: ``logits = lm_head(lm_head_multiplier * h) (+ final_logits_bias)``.
    `labels` give `decoder_input_ids` by shifting right behind `decoder_start_token_id` (what `Seq2SeqTrainer` and
    `DataCollatorForSeq2Seq` expect) and a token cross-entropy loss that ignores -100."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SkipNormConfig):
        super().__init__(config)
        self.model = SkipNormEncoderDecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.scale_lm_head_input = fold_affine(0.0, float(config.lm_head_multiplier))  # T5 tied: d**-0.5
        self.final_logits_bias = (SkipNormFinalLogitsBias(config.vocab_size) if config.final_logits_bias
                                  else nn.Identity())
        self._no_split_modules = self.model._no_split_modules  # the block classes present (FSDP / device_map)
        self._keep_in_fp32_modules_strict = self.model._keep_in_fp32_modules_strict
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> SkipNormEncoder:
        return self.model.encoder

    def get_decoder(self) -> SkipNormDecoder:
        return self.model.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize (shared embedding, tied lm_head), plus `final_logits_bias`: kept rows stay, new
        ones 0."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if isinstance(self.final_logits_bias, SkipNormFinalLogitsBias):
            old, rows = self.final_logits_bias.bias, embeddings.weight.shape[0]
            bias = torch.zeros(1, rows, dtype=old.dtype, device=old.device)
            keep = min(rows, old.shape[-1])
            bias[:, :keep] = old[:, :keep]
            self.final_logits_bias.bias = bias
        return embeddings

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs: Seq2SeqModelOutput = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, cache=cache,
            inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden_states = self.scale_lm_head_input(outputs.last_hidden_state[:, keep, :])
        logits = self.final_logits_bias(self.lm_head(hidden_states))  # (B, T_keep, V)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
            )
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states, decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions, encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states, encoder_attentions=outputs.encoder_attentions,
        )


__all__ = [
    "SkipNormEncoderDecoderModel",
    "SkipNormForConditionalGeneration",
    "SkipNormEncoder",
    "SkipNormDecoder",
    "SkipNormDecoderBlock",
    "SkipNormCrossAttention",
]
