"""DeepSeek-V3's multi-token prediction (MTP) modules on the last pipeline stage.

Each module predicts one more token ahead (DeepSeek-V3 report, Sec. 2.2): it normalises the decoder's
output and the embedding of the next token, projects their concatenation from 2h to h, runs one
transformer layer of the model's last kind (an MoE layer in DeepSeek-V3), and computes logits and a loss
through the shared output head. Megatron-Core builds the modules on the pipeline stage that holds the
loss (``MultiTokenPredictionBlock``; Megatron-Bridge's DeepSeek-V3 layouts put ``mtp`` before ``loss`` on
the last stage), so they lengthen that stage's every pass: the estimate and the search's bounds price the head's
stage with them from one place (``head_with_mtp_times``, ``head_with_mtp_activation_bytes``). Parameters are in
``costmodels.memory.stage_param_split``, FLOPs in ``costmodels.flops.mtp_forward_flops``.
"""

from __future__ import annotations

from costmodels.layer_costs import LayerTimes, PassTimes
from costmodels.memory import ActivationVariant, head_activation_bytes, layer_activation_bytes
from profiles.schema import ModelSpec


def mtp_times(layers: LayerTimes, model: ModelSpec, tp: int, mbs: int, seq_len: int, sequence_parallel: bool,
              recompute: str, cp: int = 1, ep: int = 1, etp: int | None = None, ep_overlap: float = 0.0) -> PassTimes:
    """F, B and W of the last stage's ``mtp_layers`` modules per microbatch: each its projection
    (``LayerTimes.mtp_projection``), a transformer layer of the model's last kind and the head with its loss."""
    one = layers.mtp_projection(tp, mbs, seq_len, sequence_parallel, cp=cp)
    one = one.plus(layers.transformer(tp, mbs, seq_len, sequence_parallel, recompute, cp=cp, ep=ep, moe=model.is_moe,
                                      etp=etp, ep_overlap=ep_overlap))
    return one.plus(layers.head(tp, mbs, seq_len, sequence_parallel, cp=cp)).scaled(model.mtp_layers)


def mtp_activation_bytes(model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, recompute: str,
                         variant: ActivationVariant, cp: int = 1, ep: int = 1, etp: int | None = None) -> float:
    """What the modules keep for the backward per microbatch and tp rank: each its transformer layer's
    (``layer_activation_bytes``), its head's (``head_activation_bytes``), the two norms' inputs (s·b·h each,
    over tp under sequence parallelism) and the projection's input (the 2h concatenation)."""
    tokens, h, p = seq_len // cp * mbs, model.hidden_size, variant.bytes_per_element
    norms = 2 * h * tokens / (tp if sequence_parallel else 1)
    projection = p * (norms + 2 * h * tokens)
    layer = layer_activation_bytes(model, seq_len, mbs, tp, sequence_parallel, recompute, variant, cp=cp, ep=ep,
                                   moe=model.is_moe, etp=etp)
    head = head_activation_bytes(model, seq_len // cp, mbs, tp, sequence_parallel, variant)
    return model.mtp_layers * (projection + layer + head)


def head_with_mtp_times(layers: LayerTimes, model: ModelSpec, tp: int, mbs: int, seq_len: int, sequence_parallel: bool,
                        recompute: str, cp: int = 1, ep: int = 1, etp: int | None = None,
                        ep_overlap: float = 0.0) -> PassTimes:
    """F, B and W per microbatch of what the last stage runs after its decoder layers: the head with its loss, and
    the modules riding on it (``mtp_times``; none asked of ``layers`` for a model without them). The estimate
    and the search's bounds both price the head's stage from this one sum."""
    head = layers.head(tp, mbs, seq_len, sequence_parallel, cp=cp)
    if not model.mtp_layers:
        return head
    return head.plus(mtp_times(layers, model, tp, mbs, seq_len, sequence_parallel, recompute, cp=cp, ep=ep, etp=etp,
                               ep_overlap=ep_overlap))


def head_with_mtp_activation_bytes(model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool,
                                   recompute: str, variant: ActivationVariant, cp: int = 1, ep: int = 1,
                                   etp: int | None = None) -> float:
    """What the head (``head_activation_bytes``) and the modules (``mtp_activation_bytes``) keep per microbatch."""
    head = head_activation_bytes(model, seq_len // cp, mbs, tp, sequence_parallel, variant)
    if not model.mtp_layers:
        return head
    return head + mtp_activation_bytes(model, seq_len, mbs, tp, sequence_parallel, recompute, variant, cp=cp, ep=ep,
                                       etp=etp)
