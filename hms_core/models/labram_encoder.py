"""LaBraM (Jiang et al., ICLR 2024) built through braindecode, as a foundation encoder.

LaBraM cuts each channel into 1 s patches (200 samples at 200 Hz, in units of 100 uV),
embeds each patch with a small temporal convolution (8 filters x 25 steps = width 200),
adds a learned position embedding per electrode (its 128-channel canonical set, looked up by
name, so any subset works), a learned time embedding per patch index, and a [CLS] token, and
runs a ViT over all (channel, patch) tokens. Our 19 referential channels (``referential``
store field) are all in that set, so the encoder reads them directly.

The wrapper exposes the interface of :mod:`hms_core.models.encoder_registry` by composing
braindecode's submodules (``Labram.forward`` has no masking): ``encode_patches`` replaces a
masked patch's embedding by a learned mask embedding before the position, time and [CLS]
are added, as LaBraM's own masked pretraining does. The patch embedding's GroupNorm pools
statistics over all patches of a window, so a masked patch enters it as zeros (otherwise its
content would leak into the other tokens). It returns the normed patch tokens
(the [CLS] token is dropped). ``forward_features`` is their mean (LaBraM's fine-tuning
pooling). The published weights (``braindecode/labram-pretrained``) load with
:meth:`LaBraMEncoder.load_init_weights`.
"""
from __future__ import annotations

import logging

import torch
from braindecode.models import Labram
from braindecode.models.labram import _LABRAM_CANONICAL_INDEX
from torch import nn

from hms_core import contract
from hms_core.errors import ConfigError, DataError
from hms_core.models.encoder_registry import register_encoder
from hms_core.models.patch_window import PatchWindowEncoder
from hms_core.models.published_weights import load_matching, read_published

logger = logging.getLogger(__name__)

# LaBraM's temporal convolution (stride 8, 8 filters) turns a 200-sample patch into a token
# of width 8 * 25 = 200, so both are fixed.
LABRAM_DIM = 200
LABRAM_PATCH_SAMPLES = 200


@register_encoder("labram")
class LaBraMEncoder(PatchWindowEncoder):
    """braindecode's Labram over the 19 referential channels, as a foundation encoder.

    Parameters
    ----------
    n_chans : int
        Channels (default 19, ``contract.N_EEG_CHANNELS``); only 19 is accepted.
    n_times : int
        Samples per input window (default 10,000 = 50 s at 200 Hz).
    sfreq : float
        Sampling rate in Hz (default 200; only 200 matches the published weights' patches).
    patch_s : float
        Patch length in s; must be 1.0 (200 samples, LaBraM's fixed patch).
    dim : int
        Token width; must be 200 (LaBraM's temporal convolution fixes it).
    depth : int
        Transformer blocks (published base: 12).
    heads : int
        Attention heads; must divide 200 (published base: 10).
    mlp_ratio : float
        Feed-forward width relative to 200 (published: 4.0).
    dropout : float
        Dropout of the tokens, the MLPs and the attention (braindecode's ``drop_prob`` and
        ``attn_drop_prob``).
    max_patches : int | None
        Use only the central ``max_patches`` patches (default 10); None: the whole window.
    input_scale_uv : float
        Channels are divided by this many uV (default 100: LaBraM's unit).
    """

    input_field = "referential"
    channel_names = contract.EEG_CHANNELS
    hemisphere_swap = contract.REFERENTIAL_HEMISPHERE_SWAP
    masking_parameters = ("mask_embedding",)

    def __init__(self, *, n_chans: int = contract.N_EEG_CHANNELS, n_times: int = contract.WINDOW_SAMPLES,
                 sfreq: float = contract.SAMPLING_RATE_HZ, patch_s: float = 1.0, dim: int = LABRAM_DIM,
                 depth: int = 12, heads: int = 10, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 max_patches: int | None = 10, input_scale_uv: float = 100.0):
        super().__init__()
        _check_sizes(n_chans=n_chans, sfreq=sfreq, patch_s=patch_s, dim=dim, depth=depth, heads=heads,
                     mlp_ratio=mlp_ratio, dropout=dropout, max_patches=max_patches, input_scale_uv=input_scale_uv)
        self.n_chans, self.n_times, self.sfreq = int(n_chans), int(n_times), float(sfreq)
        self.patch_samples = LABRAM_PATCH_SAMPLES
        n_available = self.n_times // self.patch_samples
        if n_available < 1:
            raise ConfigError(f"labram: a window of {self.n_times} samples is shorter than one patch")
        self.n_patches = n_available if max_patches is None else min(max_patches, n_available)
        self.dim = self.feature_dim = LABRAM_DIM
        self.input_scale_uv = float(input_scale_uv)
        self._kwargs = {"patch_s": float(patch_s), "dim": int(dim), "depth": depth, "heads": heads,
                        "mlp_ratio": float(mlp_ratio), "dropout": float(dropout), "max_patches": max_patches,
                        "input_scale_uv": float(input_scale_uv)}
        self.backbone = Labram(
            n_outputs=contract.N_CLASSES, n_chans=self.n_chans, n_times=self.used_samples, sfreq=self.sfreq,
            patch_size=self.patch_samples, num_layers=depth, num_heads=heads, mlp_ratio=mlp_ratio,
            drop_prob=dropout, attn_drop_prob=dropout, neural_tokenizer=True,
        )
        # LaBraM's classification head: kept so published weights load whole, never run, so
        # frozen (DistributedDataParallel fails on parameters that get no gradient).
        self.backbone.final_layer.requires_grad_(False)
        # rows of the position embedding: [CLS] (0), then our channels in LaBraM's canonical order
        rows = [0] + [_LABRAM_CANONICAL_INDEX[name.upper()] + 1 for name in self.channel_names]
        self.register_buffer("position_rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        # Our addition (braindecode's Labram has no masking): the embedding of a hidden patch.
        self.mask_embedding = nn.Parameter(torch.zeros(LABRAM_DIM))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)

    def encode_patches(self, patches: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled ``patches (B, C, P, L)`` -> normed patch tokens ``(B, C*P, 200)``; True in
        ``mask (B, C, P)`` replaces a patch's embedding by the mask embedding."""
        backbone = self.backbone
        batch, n_chans, n_patches, _ = patches.shape
        patches = patches.float()
        if mask is not None:
            # the temporal convolution's GroupNorm pools all patches of a window: a hidden
            # patch enters it as zeros, so its content cannot leak through those statistics
            patches = patches.masked_fill(mask[..., None], 0.0)
        tokens = backbone.patch_embed.temporal_conv(patches)  # (B, C*P, 200), channel-major
        if mask is not None:
            hidden = mask.reshape(batch, n_chans * n_patches, 1)
            tokens = torch.where(hidden, self.mask_embedding.to(tokens.dtype), tokens)
        tokens = torch.cat([backbone.cls_token.expand(batch, -1, -1), tokens], dim=1)
        position = backbone.position_embedding[:, self.position_rows]  # (1, 1 + C, 200)
        time = backbone.temporal_embedding[:, :n_patches].repeat(1, n_chans, 1)  # (1, C*P, 200)
        tokens = tokens + torch.cat([position[:, :1], position[:, 1:].repeat_interleave(n_patches, dim=1) + time], 1)
        tokens = backbone.pos_drop(tokens)
        for block in backbone.blocks:
            tokens = block(tokens)
        return backbone.norm(tokens)[:, 1:]

    def load_init_weights(self, path) -> None:
        """Load published LaBraM weights (``model.safetensors`` + ``config.json``) from ``path``.

        The position embedding covers LaBraM's 128 canonical electrodes, so the file's own
        channel set does not constrain ours. Its time embedding may be longer than this
        encoder's ``max_patches`` (its first rows are used, as LaBraM does for shorter
        windows); a published task head of another width is replaced by ours.

        Raises
        ------
        DataError
            When the file is missing or unreadable, its time embedding is shorter than
            ``max_patches``, or its keys or shapes do not fit this architecture (each named).
        """
        state, _, weights = read_published(path)
        own = self.backbone.state_dict()
        time = state.get("temporal_embedding")
        rows = own["temporal_embedding"].shape[1]
        if time is not None and time.ndim == 3 and time.shape[2] == LABRAM_DIM and time.shape[1] != rows:
            if time.shape[1] < rows:
                raise DataError(weights, f"pretrain.init_weights: the weights' time embedding covers "
                                         f"{time.shape[1] - 1} patches, the encoder reads {self.n_patches}; "
                                         f"set pretrain.model.max_patches <= {time.shape[1] - 1}")
            logger.info("labram: using the first %d of the %d time-embedding rows of %s", rows, time.shape[1], weights)
            state = {**state, "temporal_embedding": time[:, :rows]}
        head = {k: v for k, v in own.items() if k.startswith("final_layer.")}
        state = {k: v for k, v in state.items() if k not in head or v.shape == head[k].shape}
        state.update({k: v for k, v in head.items() if k not in state})  # another task head: keep ours
        load_matching(self.backbone, state, weights)
        logger.info("labram: loaded %s", weights)


def _check_sizes(*, n_chans, sfreq, patch_s, dim, depth, heads, mlp_ratio, dropout, max_patches,
                 input_scale_uv) -> None:
    """ConfigError naming the ``pretrain.model`` key of a size LaBraM cannot take."""
    if int(n_chans) != contract.N_EEG_CHANNELS:
        raise ConfigError(f"pretrain.encoder labram reads the {contract.N_EEG_CHANNELS} referential channels "
                          f"({', '.join(contract.EEG_CHANNELS)}), got n_chans {n_chans}")
    if int(round(patch_s * sfreq)) != LABRAM_PATCH_SAMPLES:
        raise ConfigError(f"pretrain.model.patch_s: labram's patches are {LABRAM_PATCH_SAMPLES} samples "
                          f"(1 s at 200 Hz), got {patch_s} s at {sfreq} Hz")
    if dim != LABRAM_DIM:
        raise ConfigError(f"pretrain.model.dim: labram's temporal convolution makes tokens of width {LABRAM_DIM}, "
                          f"got {dim}; set pretrain.model.dim: {LABRAM_DIM}")
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"pretrain.model.depth: expected a positive integer, got {depth!r}")
    if not isinstance(heads, int) or heads < 1 or LABRAM_DIM % heads:
        raise ConfigError(f"pretrain.model.heads: {heads!r} does not divide labram's width {LABRAM_DIM}; "
                          "choose one of 1, 2, 4, 5, 8, 10, 20, 25, 40, 50")
    if max_patches is not None and (not isinstance(max_patches, int) or max_patches < 1):
        raise ConfigError(f"pretrain.model.max_patches: expected a positive integer or null, got {max_patches!r}")
    if not 0 <= dropout < 1 or not input_scale_uv > 0 or not mlp_ratio > 0:
        raise ConfigError("pretrain.model: labram needs 0 <= dropout < 1, input_scale_uv > 0 and mlp_ratio > 0, "
                          f"got {dropout!r}, {input_scale_uv!r}, {mlp_ratio!r}")
